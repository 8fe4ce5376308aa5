// The chat admin console (/admin/): the live monitor of every message (ws-push
// channel chat-admin), the dialog of any two users, all messages of a user, messages
// with attachments, complaints with resolve, deleting a message. Uses the
// /api/v1/admin/* routes with the admin's token in the Authorization header. User
// text is only ever set with textContent.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var KEY = "sbc-admin-token";
  var token = "";
  var me = null;
  var push = null;
  var blobs = {};
  var views = ["monitor", "dialog", "user", "attachments", "complaints"];
  // Per list: the query it shows and its next cursor.
  var lists = {};

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === undefined || value === null || value === false) return;
      if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function toast(text) {
    var t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.hidden = true; }, 5000);
  }

  function api(method, path, body) {
    var init = { method: method, headers: { authorization: "Bearer " + token }, credentials: "omit" };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var err = new Error((data && data.message) || "HTTP " + response.status);
          err.status = response.status;
          throw err;
        }
        return data;
      });
    });
  }

  function blobUrl(path) {
    if (!blobs[path]) {
      blobs[path] = fetch(path, { headers: { authorization: "Bearer " + token }, credentials: "omit" })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
        .then(function (b) { return URL.createObjectURL(b); });
      blobs[path].catch(function () { delete blobs[path]; });
    }
    return blobs[path];
  }

  // User names from /api/v1/users, fetched in batches; links show "name (id)".
  var names = {};
  var wanted = {};
  var namesTimer = null;

  function userLink(id, onclick, title) {
    var link = el("button", { type: "button", class: "link user-link", "data-user": id, title: title, onclick: onclick });
    link.textContent = names[id] ? names[id] + " (" + id + ")" : id;
    if (names[id] === undefined) {
      wanted[id] = true;
      clearTimeout(namesTimer);
      namesTimer = setTimeout(fetchNames, 50);
    }
    return link;
  }

  function fetchNames() {
    var ids = Object.keys(wanted).slice(0, 200);
    ids.forEach(function (id) { delete wanted[id]; names[id] = ""; });
    if (!ids.length) return;
    api("GET", "/api/v1/users?ids=" + ids.map(encodeURIComponent).join(",")).then(function (r) {
      ((r && r.users) || []).forEach(function (u) { names[u.id] = u.name || u.login || ""; });
      ids.forEach(function (id) {
        if (!names[id]) return;
        var links = document.querySelectorAll('.user-link[data-user="' + CSS.escape(id) + '"]');
        for (var i = 0; i < links.length; i++) links[i].textContent = names[id] + " (" + id + ")";
      });
    }, function () { /* names are cosmetic */ });
    if (Object.keys(wanted).length) namesTimer = setTimeout(fetchNames, 50);
  }

  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d.getTime()) ? "" : d.toLocaleString();
  }

  // --- messages ------------------------------------------------------------------------

  function messageRow(m) {
    var row = el("li", { class: "message" + (m.deletedAt ? " deleted" : ""), "data-id": m.id });
    var head = el("div", { class: "head" },
      el("span", { class: "id", text: "#" + m.id }),
      el("time", { datetime: m.createdAt || "", text: when(m.createdAt) }),
      el("span", { class: "who" },
        userLink(m.from, function () { showUser(m.from); }, "All messages of this user"),
        " \u2192 ",
        userLink(m.to, function () { showUser(m.to); }, "All messages of this user")),
      el("button", { type: "button", class: "link", text: "dialog", title: "The dialog of these two users", onclick: function () { showDialog(m.from, m.to); } }),
      el("span", { class: "status", title: "State when this row was loaded or pushed",
        text: m.deletedAt ? "deleted " + when(m.deletedAt) : m.readAt ? "read" : m.deliveredAt ? "delivered" : "sent" }));
    row.appendChild(head);
    if (m.attachment && !m.deletedAt) {
      var img = el("img", { class: "thumb", alt: "attachment " + m.attachment.id });
      blobUrl(m.attachment.thumbnailUrl || m.attachment.url).then(function (u) { img.src = u; }, function () { img.alt = "attachment unavailable"; });
      var open = el("button", { type: "button", class: "thumb-button", title: "Open the full image" }, img);
      open.addEventListener("click", function () {
        blobUrl(m.attachment.url).then(function (u) { window.open(u, "_blank", "noopener"); });
      });
      row.appendChild(open);
    }
    row.appendChild(el("p", { class: "text", text: m.deletedAt ? "" : m.text }));
    var foot = el("div", { class: "foot" });
    if (m.editedAt) foot.appendChild(el("span", { text: "edited " + when(m.editedAt) }));
    if (m.userAgent) foot.appendChild(el("span", { class: "ua", text: m.userAgent }));
    if (!m.deletedAt) {
      var del = el("button", { type: "button", class: "danger delete", text: "Delete" });
      var armed = null;
      del.addEventListener("click", function () {
        if (!armed) {
          del.textContent = "Click again to delete";
          armed = setTimeout(function () { armed = null; del.textContent = "Delete"; }, 5000);
          return;
        }
        clearTimeout(armed);
        del.disabled = true;
        api("DELETE", "/api/v1/admin/messages/" + encodeURIComponent(m.id)).then(function (r) {
          updateEverywhere(r.message);
          toast("Message #" + m.id + " deleted");
        }, function (e) { del.disabled = false; toast(e.message); });
      });
      foot.appendChild(del);
    }
    row.appendChild(foot);
    return row;
  }

  function updateEverywhere(m) {
    var rows = document.querySelectorAll('li.message[data-id="' + CSS.escape(m.id) + '"]');
    for (var i = 0; i < rows.length; i++) rows[i].parentNode.replaceChild(messageRow(m), rows[i]);
  }

  function load(name, query, more) {
    var state = lists[name] = more ? lists[name] : { query: query, cursor: "" };
    var list = $(name + "-list");
    var path = "/api/v1/admin/messages?pageSize=50" + (state.query ? "&" + state.query : "") + (more && state.cursor ? "&cursor=" + encodeURIComponent(state.cursor) : "");
    if (!more) { while (list.firstChild) list.removeChild(list.firstChild); }
    return api("GET", path).then(function (r) {
      var messages = (r && r.messages) || [];
      messages.forEach(function (m) { list.appendChild(messageRow(m)); });
      if (!more && !messages.length) list.appendChild(el("li", { class: "empty", text: "No messages." }));
      state.cursor = (r && r.page && r.page.nextCursor) || "";
      $(name + "-more").hidden = !(r && r.page && r.page.hasMore);
    }, function (e) { toast(e.message); });
  }

  function q(params) {
    return Object.keys(params).filter(function (k) { return params[k]; }).map(function (k) {
      return k + "=" + encodeURIComponent(params[k]);
    }).join("&");
  }

  function showDialog(a, b) {
    $("dialog-a").value = a;
    $("dialog-b").value = b;
    select("dialog");
    return load("dialog", q({ user: a, peer: b }));
  }

  function showUser(u) {
    $("user-id").value = u;
    select("user");
    return load("user", q({ user: u }));
  }

  // --- complaints --------------------------------------------------------------------

  function complaintRow(c) {
    var resolved = isResolved(c);
    var row = el("li", { class: "complaint" + (resolved ? " resolved" : ""), "data-id": c.id },
      el("div", { class: "head" },
        el("span", { class: "id", text: "complaint #" + c.id }),
        el("time", { datetime: c.createdAt || "", text: when(c.createdAt) }),
        el("span", { class: "who" }, "from ",
          userLink(c.reporter, function () { showUser(c.reporter); }, "All messages of this user"),
          " about ",
          userLink(c.targetUser, function () { showUser(c.targetUser); }, "All messages of this user")),
        c.messageId ? el("span", { text: "message #" + c.messageId }) : null,
        el("button", { type: "button", class: "link", text: "dialog", onclick: function () { showDialog(c.reporter, c.targetUser); } })),
      el("p", { class: "text", text: c.reason }));
    if (resolved) {
      row.appendChild(el("p", { class: "resolution", text: "Resolved by " + (c.resolvedBy || "?") + " " + when(c.resolvedAt) + (c.resolution ? ": " + c.resolution : "") }));
    } else {
      var input = el("input", { class: "resolution-input", placeholder: "Resolution (what was done)", "aria-label": "Resolution of complaint " + c.id, maxlength: "1000" });
      var form = el("form", { class: "resolve" }, input, el("button", { type: "submit", text: "Resolve" }));
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        api("POST", "/api/v1/admin/complaints/" + encodeURIComponent(c.id) + "/resolve", { resolution: input.value }).then(function (r) {
          complaintChanged(r.complaint);
          toast("Complaint #" + c.id + " resolved");
        }, function (err) { toast(err.message); });
      });
      row.appendChild(form);
    }
    return row;
  }

  function isResolved(c) {
    return c.state === "COMPLAINT_STATE_RESOLVED" || c.state === 2 || !!c.resolvedAt;
  }

  // A complaint pushed live: update its row, or show a new one and count it.
  function complaintChanged(c) {
    var row = document.querySelector('li.complaint[data-id="' + CSS.escape(c.id) + '"]');
    if (row) { row.parentNode.replaceChild(complaintRow(c), row); return; }
    if (isResolved(c)) return;
    if ($("view-complaints").hidden) {
      var badge = $("complaints-new");
      badge.textContent = String(Number(badge.textContent || 0) + 1);
      badge.hidden = false;
    } else if (lists.complaints && lists.complaints.query !== "resolved") {
      var list = $("complaints-list");
      var empty = list.querySelector(".empty");
      if (empty) list.removeChild(empty);
      list.insertBefore(complaintRow(c), list.firstChild);
    }
  }

  function loadComplaints(more) {
    var state = more ? lists.complaints : (lists.complaints = { cursor: "", query: $("complaints-state").value });
    var list = $("complaints-list");
    if (!more) { while (list.firstChild) list.removeChild(list.firstChild); }
    var path = "/api/v1/admin/complaints?pageSize=50&state=" + encodeURIComponent(state.query) + (more && state.cursor ? "&cursor=" + encodeURIComponent(state.cursor) : "");
    return api("GET", path).then(function (r) {
      var complaints = (r && r.complaints) || [];
      complaints.forEach(function (c) { list.appendChild(complaintRow(c)); });
      if (!more && !complaints.length) list.appendChild(el("li", { class: "empty", text: "No complaints." }));
      state.cursor = (r && r.page && r.page.nextCursor) || "";
      $("complaints-more").hidden = !(r && r.page && r.page.hasMore);
    }, function (e) { toast(e.message); });
  }

  // --- the live monitor ------------------------------------------------------------------

  function setLive(text, state) {
    $("live").textContent = text;
    $("live").setAttribute("data-state", state);
  }

  function connectLive(url) {
    if (!url || !window.SwitchboardPush) { setLive("live updates off (no push URL)", "off"); return; }
    push = new window.SwitchboardPush(url, { token: token });
    push.on("state", function (e) { if (e.state !== "connected") setLive(e.state === "connecting" ? "connecting…" : "offline, reconnecting…", e.state); });
    push.on("connected", function () {
      push.subscribe("chat-admin").then(function () { setLive("live", "connected"); }, function (e) {
        setLive("no access to the live channel: " + e.message, "error");
      });
    });
    push.on("recovery-failed", function () { load("monitor", ""); });
    push.on("error", function (e) { if (e && e.code === 4002) setLive("the push server refused the token", "error"); });
    push.on("push", function (m) {
      var p = m.push || {};
      var data = p.data || {};
      if (p.type === "chat.message" && data.id) {
        var list = $("monitor-list");
        var empty = list.querySelector(".empty");
        if (empty) list.removeChild(empty);
        if (!list.querySelector('li.message[data-id="' + CSS.escape(data.id) + '"]')) list.insertBefore(messageRow(data), list.firstChild);
      } else if ((p.type === "chat.message.edited" || p.type === "chat.message.deleted") && data.id) {
        updateEverywhere(data);
      } else if (p.type === "chat.complaint" && data.id) {
        complaintChanged(data);
      }
    });
    push.connect();
  }

  // --- views -------------------------------------------------------------------------------

  function select(view) {
    views.forEach(function (v) {
      var on = v === view;
      $("view-" + v).hidden = !on;
      $("tab-" + v).setAttribute("aria-selected", on ? "true" : "false");
      $("tab-" + v).tabIndex = on ? 0 : -1;
    });
    if (view === "complaints") {
      $("complaints-new").hidden = true;
      $("complaints-new").textContent = "";
      loadComplaints(false);
    }
  }

  function start(t) {
    token = t;
    return api("GET", "/api/v1/me").then(function (r) {
      if (!r.admin) throw new Error("this token is not an admin's");
      me = r;
      $("signin").hidden = true;
      $("console").hidden = false;
      $("signout").hidden = false;
      document.body.setAttribute("data-admin", "ready");
      load("monitor", "");
      connectLive(r.pushUrl);
    }).catch(function (e) {
      $("signin-error").textContent = e.message;
      try { sessionStorage.removeItem(KEY); } catch (err) { /* private mode */ }
    });
  }

  $("signin").addEventListener("submit", function (e) {
    e.preventDefault();
    var t = $("token").value.trim();
    try { sessionStorage.setItem(KEY, t); } catch (err) { /* private mode */ }
    start(t);
  });
  $("signout").addEventListener("click", function () {
    try { sessionStorage.removeItem(KEY); } catch (err) { /* private mode */ }
    if (push) push.close();
    location.reload();
  });
  views.forEach(function (v) { $("tab-" + v).addEventListener("click", function () { select(v); }); });
  document.querySelector(".tabs").addEventListener("keydown", function (e) {
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    var current = views.filter(function (v) { return !$("view-" + v).hidden; })[0];
    var next = views[(views.indexOf(current) + (e.key === "ArrowRight" ? 1 : views.length - 1)) % views.length];
    select(next);
    $("tab-" + next).focus();
  });
  $("dialog-form").addEventListener("submit", function (e) { e.preventDefault(); showDialog($("dialog-a").value.trim(), $("dialog-b").value.trim()); });
  $("user-form").addEventListener("submit", function (e) { e.preventDefault(); showUser($("user-id").value.trim()); });
  $("attachments-form").addEventListener("submit", function (e) {
    e.preventDefault();
    load("attachments", q({ user: $("attachments-user").value.trim(), attachmentsOnly: "true" }));
  });
  $("tab-attachments").addEventListener("click", function () {
    if (!lists.attachments) load("attachments", q({ attachmentsOnly: "true" }));
  });
  $("complaints-form").addEventListener("submit", function (e) { e.preventDefault(); loadComplaints(false); });
  ["monitor", "dialog", "user", "attachments"].forEach(function (name) {
    $(name + "-more").addEventListener("click", function () { load(name, null, true); });
  });
  $("complaints-more").addEventListener("click", function () { loadComplaints(true); });

  var saved = null;
  try { saved = sessionStorage.getItem(KEY); } catch (err) { saved = null; }
  if (saved) start(saved);
})();
