// The demo page's script: connects with the token from the form (or #token=... in
// the URL), logs every event. Text only: pushes are never rendered as HTML.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var client = null;
  function log(kind, value) {
    var line = document.createElement("div");
    line.className = kind;
    line.textContent = new Date().toISOString().slice(11, 23) + " " + kind + " " + JSON.stringify(value);
    $("log").appendChild(line);
    $("log").scrollTop = $("log").scrollHeight;
  }
  var fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) $("token").value = fromHash;
  function connect() {
    if (client) client.close();
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    client = new SwitchboardPush(scheme + location.host + "/ws", { token: $("token").value });
    client.on("state", function (s) { $("state").textContent = s.state; window.demoState = s.state; });
    client.on("push", function (m) {
      // An answer a rule tagged with the asking connection (F4's admin-ping) belongs
      // to that tab only; the user's other tabs leave it out.
      var data = m.push && m.push.data;
      if (data && typeof data.connection === "string" && data.connection && data.connection !== window.demoConnection) return;
      log("push", m);
      (window.demoPushes = window.demoPushes || []).push(m);
    });
    client.on("connected", function (m) { window.demoConnection = m.client; });
    client.on("error", function (e) { log("error", e); });
    client.on("recovery-failed", function (e) { log("recovery-failed", e); });
    client.on("subscribed", function (m) { log("subscribed", m); });
    client.connect();
    window.demoClient = client;
  }
  $("connect").addEventListener("click", connect);
  $("subscribe").addEventListener("click", function () {
    if (client) client.subscribe($("channel").value).catch(function (e) { log("error", e.message); });
  });
  $("publish").addEventListener("click", function () {
    var data;
    try { data = JSON.parse($("data").value); } catch (e) { log("error", "data is not JSON"); return; }
    if (client) client.publish($("topic").value, data).then(function (m) { log("published", m); }, function (e) { log("error", e.message); });
  });
  if (fromHash) connect();
})();
