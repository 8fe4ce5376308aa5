// The demo page: operator 101's screen pop and the live event feed (one ws-push
// connection as 101, subscribed to `demo-events`), the IM panel (alice's conversation
// with the bot and bob's messages, from the same feed; alice's sends and the site's
// notifications through the demo's endpoints), the admin's ping (a connection as
// `admin`) and the hand-over of the admin token to chat-store's console (same origin,
// sessionStorage). Tokens come from the demo's loopback-only token endpoint. Every
// text from users or events is set with textContent only.
(function () {
  "use strict";
  var MAX_ROWS = 60;
  var ADMIN_TOKEN_KEY = "sbc-admin-token"; // the key chat-store's /admin/ reads
  var $ = function (id) { return document.getElementById(id); };
  var adminToken = null;

  function tokenFor(user) {
    return postJson("/demo/token", { user: user }).then(function (answer) {
      if (user === "admin") adminToken = answer.token;
      return answer;
    });
  }

  function clock(iso) {
    var d = iso ? new Date(iso) : new Date();
    if (isNaN(d.getTime())) d = new Date();
    return d.toTimeString().slice(0, 8);
  }

  function addRow(list, kind, time, text) {
    var li = document.createElement("li");
    li.className = kind;
    var t = document.createElement("time");
    t.textContent = time;
    var span = document.createElement("span");
    span.textContent = text;
    li.appendChild(t);
    li.appendChild(span);
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_ROWS) list.removeChild(list.lastChild);
  }

  function postJson(path, body) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (answer) {
        if (!r.ok) throw new Error(answer.error || String(r.status));
        return answer;
      });
    });
  }

  // The user part of a JID: "alice@example.org/switchboard" -> "alice".
  function who(jid) {
    return String(jid || "?").split("@")[0];
  }

  // An IM that reached one of the demo's XMPP accounts (im-bridge holds all three:
  // `main` is the bot, `alice` and `bob` the demo users).
  function showIm(account, d, time) {
    var line = who(d.from) + " → " + (account === "main" ? "bot" : account) + ": " + (d.text || "");
    if (account === "bob") {
      addRow($("im-bob"), "im-in", time, line);
    } else if (account === "alice" || who(d.from) === "alice") {
      addRow($("im-alice"), account === "alice" ? "im-in" : "im-out", time, line);
    }
  }

  function party(p) {
    if (!p) return "unknown";
    var number = p.number || "unknown";
    return p.name ? number + " (" + p.name + ")" : number;
  }

  // One line for a mirrored event: {subject, type, time, data}.
  function describe(e) {
    var s = String(e.subject || "");
    var tokens = s.split(".");
    var d = e.data || {};
    if (tokens[2] === "ami" && tokens[4] === "call") {
      var state = tokens[5];
      var line = "call " + state + ": " + party(d.caller) + " → " + (d.extension || "?");
      if (d.missed) line += " — missed";
      if (state === "ended" && d.hangupCauseText) line += " (" + d.hangupCauseText + ")";
      return { kind: "call call-" + state + (d.missed ? " missed" : ""), text: line };
    }
    if (tokens[2] === "chat") {
      var m = d.message || {};
      var what = m.text ? m.text : (m.attachment ? "[image]" : "");
      return { kind: "chat", text: "chat " + (m.from || "?") + " → " + (m.to || "?") + ": " + what };
    }
    if (tokens[2] === "im") {
      return { kind: "im", text: "IM to " + tokens[3] + " from " + (d.from || "?") + ": " + (d.text || "") };
    }
    if (tokens[2] === "push" && tokens[3] === "inbound") {
      var host = d.data && d.data.host ? d.data.host : "?";
      return { kind: "admin", text: "admin " + (d.user || "?") + " asks to ping " + host };
    }
    if (tokens[2] === "hook") {
      var outcome = tokens[4];
      var error = "";
      (d.actions || []).forEach(function (a) { if (a.error && !error) error = a.error; });
      return {
        kind: "hook hook-" + outcome,
        text: "rule " + tokens[3] + " " + outcome + (error ? ": " + error : ""),
      };
    }
    return { kind: "other", text: s + " " + JSON.stringify(d).slice(0, 200) };
  }

  // Operator 101: screen pops, and the live feed.
  tokenFor("101").then(function (first) {
    var operator = new SwitchboardPush(first.pushUrl, {
      getToken: function () { return tokenFor("101").then(function (a) { return a.token; }); },
    });
    operator.on("state", function (s) {
      $("status").textContent = s.state;
      document.body.setAttribute("data-push", s.state);
    });
    operator.on("push:call.ringing", function (m) {
      var d = m.push.data || {};
      var pop = $("pop");
      pop.className = "pop ringing";
      pop.setAttribute("data-state", "ringing");
      pop.querySelector(".pop-label").textContent = "Incoming call on " + (d.extension || "101") + " from";
      $("pop-number").textContent = d.number || "unknown number";
      $("pop-name").textContent = d.name || "";
      addRow($("pop-history"), "pop", clock(), party({ number: d.number, name: d.name }));
    });
    operator.on("push:notice", function (m) {
      var d = m.push.data || {};
      addRow($("notices"), "notice", clock(), (d.site ? "[" + d.site + "] " : "") + (d.text || ""));
    });
    operator.on("push:demo.event", function (m) {
      var e = m.push.data || {};
      var row = describe(e);
      addRow($("events"), row.kind, clock(e.time), row.text);
      var tokens = String(e.subject || "").split(".");
      var d = e.data || {};
      if (tokens[2] === "im" && tokens[4] === "message") showIm(tokens[3], d, clock(e.time));
      if (tokens[4] === "call" && (tokens[5] === "answered" || tokens[5] === "ended") && d.extension === "101") {
        var pop = $("pop");
        pop.className = "pop " + tokens[5];
        pop.setAttribute("data-state", tokens[5]);
        pop.querySelector(".pop-label").textContent = tokens[5] === "answered" ? "In call with" : "Last call from";
      }
    });
    operator.on("error", function (e) { addRow($("events"), "error", clock(), "ws-push: " + e.message); });
    operator.connect();
    operator.subscribe("demo-events");
  }).catch(function (e) { $("status").textContent = e.message; });

  // IM: on when the demo runs an XMPP server (prosody installed).
  fetch("/demo/info", { credentials: "omit", cache: "no-store" }).then(function (r) {
    if (!r.ok) throw new Error("demo info: " + r.status);
    return r.json();
  }).then(function (info) {
    var panel = $("im-panel");
    if (!info.im) {
      panel.setAttribute("data-im", "off");
      $("im-about").textContent = "No XMPP server: prosody is not installed, so F2, F3 and F7 are not shown " +
        "(apt-get install prosody, or run scripts/up.sh --demo, which installs it). " +
        "The F3 rule missed-call-im shows in the feed as failed.";
      return;
    }
    panel.setAttribute("data-im", "on");
    $("im-about").textContent = "A prosody for " + info.im.domain + " runs beside the demo: " + info.im.bot +
      " is im-bridge's account main, which the example rules send through; im-bridge also holds " +
      info.im.user + " and bob@" + info.im.domain + ", so what they receive shows here. " +
      "Every few seconds the demo itself asks for a call, notifies and writes to the FIFO.";
    $("im-fifo").textContent = "echo '/msg main " + info.im.user + " hello' > " + info.im.fifo;
    $("im-on").hidden = false;
  }).catch(function (e) { $("im-about").textContent = e.message; });

  // A form that posts its text to `path`; `describe(answer)` says how it went.
  function sendForm(form, input, state, path, describe) {
    $(form).addEventListener("submit", function (ev) {
      ev.preventDefault();
      var text = $(input).value;
      $(state).textContent = "sending…";
      postJson(path, { text: text }).then(function (answer) {
        $(state).textContent = describe ? describe(answer) : "sent";
      }).catch(function (e) {
        $(state).textContent = "refused: " + e.message;
      });
    });
  }
  sendForm("im-form", "im-text", "im-state", "/demo/im");
  sendForm("site-form", "site-text", "site-state", "/demo/site");
  sendForm("notify-form", "notify-text", "notify-state", "/demo/notify", function (answer) {
    return "ws-push: 101 is " + (answer.online ? "online on " + answer.connections + " connection(s)" : "offline");
  });

  // The admin: F4's ping, answered only to this connection.
  var admin = null;
  var adminClient = null;
  tokenFor("admin").then(function (first) {
    admin = new SwitchboardPush(first.pushUrl, {
      getToken: function () { return tokenFor("admin").then(function (a) { return a.token; }); },
    });
    var pinged = false;
    admin.on("connected", function (c) {
      adminClient = c.client;
      // F4 runs once by itself, so a newcomer sees it without a click.
      if (!pinged) {
        pinged = true;
        setTimeout(function () { $("ping-form").requestSubmit(); }, 1000);
      }
    });
    admin.on("push:admin.ping.result", function (m) {
      var d = m.push.data || {};
      if (d.connection && adminClient && d.connection !== adminClient) return;
      $("ping-state").textContent = "exit code " + d.exitCode;
      $("ping-output").textContent = (d.output || "") + (d.stderr ? "\n" + d.stderr : "");
      document.body.setAttribute("data-ping", "done");
    });
    admin.connect();
  }).catch(function (e) { $("ping-state").textContent = e.message; });

  $("ping-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (!admin) return;
    var host = $("ping-host").value.trim();
    $("ping-state").textContent = "running…";
    $("ping-output").textContent = "";
    document.body.setAttribute("data-ping", "running");
    admin.publish("admin-ping", { host: host }).catch(function (e) {
      $("ping-state").textContent = "refused: " + e.message;
    });
  });

  // The admin console is chat-store's page, served through this origin: the token
  // goes into this origin's sessionStorage, which a tab opened from here inherits.
  $("open-admin").addEventListener("click", function () {
    if (!adminToken) return;
    try { sessionStorage.setItem(ADMIN_TOKEN_KEY, adminToken); } catch (err) { /* private mode */ }
    var opened = window.open("/admin/", "_blank");
    if (!opened) location.assign("/admin/");
  });
})();
