// The demo page's script: a host page using the widget's API. No inline scripts (the
// page's Content-Security-Policy forbids them); everything shown with textContent.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var KEY = "sbc-demo-token";

  function log(text) {
    var item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + " " + text;
    $("events").insertBefore(item, $("events").firstChild);
    while ($("events").children.length > 20) $("events").removeChild($("events").lastChild);
  }

  function showUnread() {
    $("unread").textContent = String(SwitchboardChat.countNewMessagesSum());
    var peer = $("peer").value.trim();
    $("unread-peer").textContent = peer ? String(SwitchboardChat.countNewMessages(peer)) : "0";
  }

  function start(token, lang) {
    $("signin").hidden = true;
    $("host").hidden = false;
    SwitchboardChat.on("unread", function (e) { showUnread(); log("unread: " + e.total); });
    SwitchboardChat.on("message", function (e) { log("new message from " + e.peer); });
    SwitchboardChat.on("state", function (e) { log("live: " + e.state); });
    SwitchboardChat.init({
      token: token,
      lang: lang || undefined,
      open: false,
      success: function (chat) {
        document.body.setAttribute("data-chat", "ready");
        $("who").textContent = chat.user();
        showUnread();
        log("ready; " + chat.countNewMessagesSum() + " unread");
      },
      error: function (e) {
        document.body.setAttribute("data-chat", "error");
        log("could not start: " + e.message);
      }
    }).catch(function () {});
  }

  $("signin").addEventListener("submit", function (e) {
    e.preventDefault();
    var token = $("token").value.trim();
    var lang = $("lang").value;
    try { sessionStorage.setItem(KEY, JSON.stringify({ token: token, lang: lang })); } catch (err) { /* private mode */ }
    start(token, lang);
  });
  $("signout").addEventListener("click", function () {
    try { sessionStorage.removeItem(KEY); } catch (err) { /* private mode */ }
    location.reload();
  });
  $("open").addEventListener("click", function () { SwitchboardChat.openDialog(); });
  $("write").addEventListener("submit", function (e) {
    e.preventDefault();
    SwitchboardChat.openDialog($("peer").value.trim());
    showUnread();
  });
  $("peer").addEventListener("input", showUnread);

  var saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch (err) { saved = null; }
  if (saved && saved.token) start(saved.token, saved.lang);
})();
