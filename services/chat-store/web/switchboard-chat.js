// switchboard-chat.js: the Switchboard chat widget. Served by chat-store at
// /widget/switchboard-chat.js after ws-push's client (switchboard-push.js), so one
// script tag brings both. No dependencies, no build step.
//
//   <link rel="stylesheet" href="https://chat.example.com/widget/switchboard-chat.css">
//   <script src="https://chat.example.com/widget/switchboard-chat.js"></script>
//   SwitchboardChat.init({ token, open: false, success(chat) { ... } });
//
// Options, methods and events: docs/chat-store.md, "Widget". User text is only ever
// put into the page with textContent; the token only travels in Authorization
// headers and in ws-push's first WebSocket message, never in a URL.
(function (root) {
  "use strict";

  var STRINGS = {
    en: {
      chat: "Chat", open: "Open chat", close: "Close", all: "All", favourites: "Favourites",
      blocked: "Blocked", search: "Search contacts", noDialogs: "No conversations yet",
      noResults: "Nobody found", back: "Back", typing: "typing…", send: "Send",
      write: "Write a message…", attach: "Attach an image", removeImage: "Remove image",
      sending: "Sending…", sent: "Sent", delivered: "Delivered", read: "Read",
      failed: "Not sent", retry: "Retry", favourite: "Add to favourites",
      unfavourite: "Remove from favourites", block: "Block", unblock: "Unblock",
      complain: "Complain", complainAbout: "Complain about this message",
      reason: "Reason", reasonSpam: "Spam", reasonAbuse: "Abuse or insults",
      reasonFraud: "Fraud", reasonOther: "Other", details: "Details (optional)",
      cancel: "Cancel", complaintSent: "Complaint sent. Thank you.",
      translate: "Translate", translating: "Translating…", mute: "Mute sounds",
      unmute: "Turn sounds on", connecting: "Connecting…", offline: "Offline, reconnecting…",
      noLive: "Live updates are off", youBlocked: "You blocked this user. Unblock to write.",
      blockedYou: "This user does not accept your messages.", loadingOlder: "Loading…",
      deleted: "Message deleted", edited: "edited", image: "Image", tooLarge: "The image is too large.",
      notImage: "Only images can be attached.", error: "Something went wrong.",
      signedOut: "Your session has ended. Reload the page.", newMessage: "New message",
      unreadCount: "{n} unread", you: "You: "
    },
    ru: {
      chat: "Чат", open: "Открыть чат", close: "Закрыть", all: "Все", favourites: "Избранные",
      blocked: "Заблокированные", search: "Поиск контактов", noDialogs: "Пока нет переписки",
      noResults: "Никого не найдено", back: "Назад", typing: "печатает…", send: "Отправить",
      write: "Напишите сообщение…", attach: "Прикрепить изображение", removeImage: "Убрать изображение",
      sending: "Отправляется…", sent: "Отправлено", delivered: "Доставлено", read: "Прочитано",
      failed: "Не отправлено", retry: "Повторить", favourite: "В избранное",
      unfavourite: "Убрать из избранного", block: "Заблокировать", unblock: "Разблокировать",
      complain: "Пожаловаться", complainAbout: "Пожаловаться на сообщение",
      reason: "Причина", reasonSpam: "Спам", reasonAbuse: "Оскорбления",
      reasonFraud: "Мошенничество", reasonOther: "Другое", details: "Подробности (необязательно)",
      cancel: "Отмена", complaintSent: "Жалоба отправлена. Спасибо.",
      translate: "Перевести", translating: "Перевод…", mute: "Выключить звук",
      unmute: "Включить звук", connecting: "Подключение…", offline: "Нет связи, переподключаемся…",
      noLive: "Обновления в реальном времени выключены",
      youBlocked: "Вы заблокировали этого пользователя. Разблокируйте, чтобы писать.",
      blockedYou: "Этот пользователь не принимает ваши сообщения.", loadingOlder: "Загрузка…",
      deleted: "Сообщение удалено", edited: "изменено", image: "Изображение",
      tooLarge: "Изображение слишком большое.", notImage: "Можно прикреплять только изображения.",
      error: "Что-то пошло не так.", signedOut: "Сессия закончилась. Обновите страницу.",
      newMessage: "Новое сообщение", unreadCount: "Непрочитанных: {n}", you: "Вы: "
    },
    pl: {
      chat: "Czat", open: "Otwórz czat", close: "Zamknij", all: "Wszystkie", favourites: "Ulubione",
      blocked: "Zablokowani", search: "Szukaj kontaktów", noDialogs: "Brak rozmów",
      noResults: "Nikogo nie znaleziono", back: "Wstecz", typing: "pisze…", send: "Wyślij",
      write: "Napisz wiadomość…", attach: "Dołącz obraz", removeImage: "Usuń obraz",
      sending: "Wysyłanie…", sent: "Wysłano", delivered: "Dostarczono", read: "Przeczytano",
      failed: "Nie wysłano", retry: "Ponów", favourite: "Dodaj do ulubionych",
      unfavourite: "Usuń z ulubionych", block: "Zablokuj", unblock: "Odblokuj",
      complain: "Zgłoś", complainAbout: "Zgłoś tę wiadomość",
      reason: "Powód", reasonSpam: "Spam", reasonAbuse: "Obelgi lub nękanie",
      reasonFraud: "Oszustwo", reasonOther: "Inny", details: "Szczegóły (opcjonalnie)",
      cancel: "Anuluj", complaintSent: "Zgłoszenie wysłane. Dziękujemy.",
      translate: "Przetłumacz", translating: "Tłumaczenie…", mute: "Wycisz dźwięki",
      unmute: "Włącz dźwięki", connecting: "Łączenie…", offline: "Brak połączenia, ponawianie…",
      noLive: "Aktualizacje na żywo są wyłączone",
      youBlocked: "Zablokowałeś tego użytkownika. Odblokuj, aby pisać.",
      blockedYou: "Ten użytkownik nie przyjmuje twoich wiadomości.", loadingOlder: "Ładowanie…",
      deleted: "Wiadomość usunięta", edited: "edytowano", image: "Obraz",
      tooLarge: "Obraz jest za duży.", notImage: "Można dołączać tylko obrazy.",
      error: "Coś poszło nie tak.", signedOut: "Sesja wygasła. Odśwież stronę.",
      newMessage: "Nowa wiadomość", unreadCount: "Nieprzeczytane: {n}", you: "Ty: "
    }
  };

  function pickLang(wanted) {
    var list = [wanted].concat(root.navigator ? root.navigator.languages || [root.navigator.language] : []);
    for (var i = 0; i < list.length; i++) {
      var code = String(list[i] || "").toLowerCase().slice(0, 2);
      if (STRINGS[code]) return code;
    }
    return "en";
  }

  // el("button", {class: "x", onclick: f, "aria-label": "..."}, child, "text", ...):
  // strings become text nodes, never markup.
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === undefined || value === null || value === false) return;
        if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
        else if (key === "text") node.textContent = value;
        else if (key === "hidden") node.hidden = !!value;
        else if (key === "disabled") node.disabled = !!value;
        else node.setAttribute(key, value === true ? "" : String(value));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // Line icons (SVG built in the DOM: no markup strings, no icon font, no emoji font).
  var ICONS = {
    chat: ["M21 11.5a8.38 8.38 0 0 1-.9 3.8 8.5 8.5 0 0 1-7.6 4.7 8.38 8.38 0 0 1-3.8-.9L3 21l1.9-5.7a8.38 8.38 0 0 1-.9-3.8 8.5 8.5 0 0 1 4.7-7.6 8.38 8.38 0 0 1 3.8-.9h.5a8.48 8.48 0 0 1 8 8v.5z"],
    bell: ["M18 8A6 6 0 0 0 6 8c0 7-3 9-3 9h18s-3-2-3-9", "M13.73 21a2 2 0 0 1-3.46 0"],
    bellOff: ["M18 8A6 6 0 0 0 6 8c0 7-3 9-3 9h18s-3-2-3-9", "M13.73 21a2 2 0 0 1-3.46 0", "M2 2l20 20"],
    clip: ["M21.44 11.05l-9.19 9.19a6 6 0 0 1-8.49-8.49l9.19-9.19a4 4 0 0 1 5.66 5.66l-9.2 9.19a2 2 0 0 1-2.83-2.83l8.49-8.48"]
  };

  function icon(name) {
    var NS = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(NS, "svg");
    [["viewBox", "0 0 24 24"], ["width", "20"], ["height", "20"], ["fill", "none"], ["stroke", "currentColor"],
      ["stroke-width", "2"], ["stroke-linecap", "round"], ["stroke-linejoin", "round"], ["aria-hidden", "true"], ["focusable", "false"]]
      .forEach(function (a) { svg.setAttribute(a[0], a[1]); });
    ICONS[name].forEach(function (d) {
      var path = document.createElementNS(NS, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    });
    return svg;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function newClientId() {
    if (root.crypto && root.crypto.randomUUID) return root.crypto.randomUUID();
    return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function idNum(id) {
    return id ? Number(id) : 0;
  }

  function ApiError(status, body) {
    var e = new Error((body && body.message) || "HTTP " + status);
    e.status = status;
    e.reason = (body && body.reason) || "";
    return e;
  }

  // --- one widget instance -------------------------------------------------------

  function Chat(options) {
    this.options = options;
    this.server = String(options.server || defaultServer()).replace(/\/+$/, "");
    this.token = options.token || "";
    this.getToken = typeof options.getToken === "function" ? options.getToken : null;
    this.lang = pickLang(options.lang);
    this.s = STRINGS[this.lang];
    this.me = null;
    this.users = {}; // id -> {id, name, login, ...}
    this.dialogs = {}; // peer -> {peer, lastMessage, unread, favourite, blocked}
    this.order = []; // peers in list order
    this.tab = "all";
    this.unreadTotal = 0;
    this.current = null; // {peer, messages: Map id -> msg, nextCursor, loading, pending: {}}
    this.typingTimers = {};
    this.receipts = {}; // peer -> {deliveredAt: {upTo, at}, readAt: {upTo, at}}: my messages they got/read
    this.lastTypingSent = 0;
    this.muted = storageGet("sbc-muted") === "1";
    this.audio = null;
    this.isOpen = false;
    this.image = null; // {file, url}
    this.blobs = {}; // attachment path -> Promise<blob URL>
    this.push = null;
    this.liveState = "connecting";
  }

  // Where this script came from, read while it runs (later, document.currentScript is
  // the page's script that calls init): chat-store's origin, the default `server`.
  var scriptElement = document.currentScript || document.querySelector('script[src*="switchboard-chat.js"]');
  var scriptOrigin = "";
  try {
    scriptOrigin = new URL(scriptElement.src, root.location.href).origin;
  } catch (e) {
    scriptOrigin = "";
  }

  function defaultServer() {
    return scriptOrigin || root.location.origin;
  }

  function storageGet(key) {
    try { return root.localStorage.getItem(key); } catch (e) { return null; }
  }
  function storageSet(key, value) {
    try { root.localStorage.setItem(key, value); } catch (e) { /* private mode */ }
  }

  // Event handlers, kept across init calls so a page may subscribe before init.
  var handlers = {};

  Chat.prototype.emit = function (event, payload) {
    if (this.destroyed) return;
    (handlers[event] || []).slice().forEach(function (h) {
      try { h(payload); } catch (e) { if (root.console) root.console.error(e); }
    });
  };

  // --- HTTP ----------------------------------------------------------------------

  Chat.prototype.authToken = function () {
    var self = this;
    if (self.token || !self.getToken) return Promise.resolve(self.token);
    return Promise.resolve(self.getToken()).then(function (t) { self.token = t; return t; });
  };

  Chat.prototype.api = function (method, path, body, retried) {
    var self = this;
    return self.authToken().then(function (token) {
      var init = { method: method, headers: { authorization: "Bearer " + token }, credentials: "omit" };
      if (body !== undefined) {
        init.headers["content-type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      return fetch(self.server + path, init).then(function (response) {
        if (response.status === 401 && self.getToken && !retried) {
          self.token = "";
          return self.api(method, path, body, true);
        }
        if (response.status === 204) return null;
        return response.text().then(function (text) {
          var data = null;
          try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
          if (!response.ok) throw ApiError(response.status, data);
          return data;
        });
      });
    });
  };

  // An attachment as a blob: URL (an <img src> cannot carry the Authorization header).
  Chat.prototype.blobUrl = function (path) {
    var self = this;
    if (!self.blobs[path]) {
      self.blobs[path] = self.authToken().then(function (token) {
        return fetch(self.server + path, { headers: { authorization: "Bearer " + token }, credentials: "omit" });
      }).then(function (response) {
        if (!response.ok) throw ApiError(response.status, null);
        return response.blob();
      }).then(function (blob) { return URL.createObjectURL(blob); });
      self.blobs[path].catch(function () { delete self.blobs[path]; });
    }
    return self.blobs[path];
  };

  // Uploads with progress (XHR: fetch has no upload progress).
  Chat.prototype.upload = function (file, onProgress) {
    var self = this;
    return self.authToken().then(function (token) {
      return new Promise(function (resolve, reject) {
        var xhr = new XMLHttpRequest();
        xhr.open("POST", self.server + "/api/v1/attachments");
        xhr.setRequestHeader("authorization", "Bearer " + token);
        xhr.setRequestHeader("content-type", file.type || "application/octet-stream");
        xhr.upload.onprogress = function (e) { if (e.lengthComputable) onProgress(e.loaded / e.total); };
        xhr.onload = function () {
          var data = null;
          try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
          if (xhr.status >= 200 && xhr.status < 300 && data) resolve(data);
          else reject(ApiError(xhr.status, data));
        };
        xhr.onerror = function () { reject(ApiError(0, null)); };
        xhr.send(file);
      });
    });
  };

  Chat.prototype.loadUsers = function (ids) {
    var self = this;
    var missing = ids.filter(function (id) { return id && !self.users[id]; });
    if (!missing.length) return Promise.resolve();
    missing.forEach(function (id) { self.users[id] = { id: id }; });
    var chunks = [];
    for (var i = 0; i < missing.length; i += 100) chunks.push(missing.slice(i, i + 100));
    return Promise.all(chunks.map(function (chunk) {
      return self.api("GET", "/api/v1/users?ids=" + chunk.map(encodeURIComponent).join(",")).then(function (r) {
        ((r && r.users) || []).forEach(function (u) { self.users[u.id] = u; });
      }, function () { /* names are cosmetic */ });
    })).then(function () { self.renderNames(); });
  };

  Chat.prototype.name = function (id) {
    var u = this.users[id];
    return (u && (u.name || u.login)) || String(id);
  };

  // --- start ---------------------------------------------------------------------

  Chat.prototype.start = function () {
    var self = this;
    self.build();
    return self.api("GET", "/api/v1/me").then(function (me) {
      self.me = me;
      self.loadUsers([me.user]);
      var pushUrl = self.options.push === undefined ? me.pushUrl : self.options.push;
      self.connectPush(pushUrl);
      return Promise.all([self.loadDialogs(), self.refreshUnread()]);
    }).then(function () {
      if (self.options.open) self.openDialog();
      return self;
    });
  };

  Chat.prototype.connectPush = function (url) {
    var self = this;
    if (!url || !root.SwitchboardPush) {
      self.setLive("off");
      return;
    }
    // With getToken, ws-push asks for a fresh token before expiry; without, the one token.
    var push = new root.SwitchboardPush(url, self.getToken
      ? { getToken: function () { self.token = ""; return self.authToken(); } }
      : { token: self.token });
    self.push = push;
    var everConnected = false;
    push.on("state", function (e) { if (e.state !== "connected") self.setLive(e.state === "connecting" && !everConnected ? "connecting" : "offline"); });
    push.on("connected", function () {
      self.setLive("connected");
      // After a reconnect, pick up whatever the recovery could not replay.
      if (everConnected) self.resync();
      everConnected = true;
    });
    push.on("recovery-failed", function () { self.resync(); });
    push.on("error", function (e) { if (e && (e.code === 4002 || e.code === 4010)) self.setLive("signedOut"); });
    push.on("push", function (m) { self.onPush(m.push || {}); });
    push.connect();
  };

  Chat.prototype.resync = function () {
    this.loadDialogs();
    this.refreshUnread();
    if (this.current) this.loadHistory(true);
  };

  Chat.prototype.setLive = function (state) {
    if (state === this.liveState && this.ui.root.hasAttribute("data-live")) return;
    this.liveState = state;
    var text = { connecting: this.s.connecting, offline: this.s.offline, off: this.s.noLive, signedOut: this.s.signedOut }[state] || "";
    this.ui.live.textContent = text;
    this.ui.live.hidden = !text;
    this.ui.root.setAttribute("data-live", state);
    this.emit("state", { state: state });
  };

  // --- pushes ----------------------------------------------------------------------

  Chat.prototype.onPush = function (push) {
    var data = push.data || {};
    switch (push.type) {
      case "chat.message": this.onMessage(data); break;
      case "chat.message.edited":
      case "chat.message.deleted": this.onChanged(data); break;
      case "chat.receipt": this.onReceipt(data); break;
      case "chat.typing": this.onTyping(data); break;
      case "chat.relation": this.loadDialogs(); break;
      default: break;
    }
  };

  Chat.prototype.peerOf = function (message) {
    return message.from === this.me.user ? message.to : message.from;
  };

  Chat.prototype.onMessage = function (message) {
    var self = this;
    if (!self.me || !message.id) return;
    var peer = self.peerOf(message);
    var incoming = message.from !== self.me.user;
    var d = self.dialogs[peer] || (self.dialogs[peer] = { peer: peer, unread: 0 });
    if (!d.lastMessage || idNum(d.lastMessage.id) <= idNum(message.id)) d.lastMessage = message;
    self.loadUsers([peer]);
    var viewing = incoming && self.current && self.current.peer === peer && self.isOpen && !document.hidden;
    if (self.current && self.current.peer === peer) self.addMessages([message]);
    if (incoming) {
      self.stopTyping(peer);
      if (viewing) {
        self.api("POST", "/api/v1/dialogs/" + encodeURIComponent(peer) + "/read", { upToMessageId: message.id }).then(function () { self.refreshUnread(); });
      } else {
        d.unread = (d.unread || 0) + 1;
        self.unreadTotal += 1;
        self.deliverLater(peer, message.id);
        self.unreadChanged(peer);
        self.syncUnreadLater(peer);
      }
      self.beep();
      self.emit("message", { message: message, peer: peer });
    }
    self.moveToTop(peer);
  };

  // Marks a peer's messages delivered up to the newest id seen: one request per burst.
  Chat.prototype.deliverLater = function (peer, id) {
    var self = this;
    var due = self.deliveries || (self.deliveries = {});
    var entry = due[peer] || (due[peer] = { upTo: 0, timer: null });
    entry.upTo = Math.max(entry.upTo, idNum(id));
    if (entry.timer) return;
    entry.timer = setTimeout(function () {
      delete due[peer];
      self.api("POST", "/api/v1/dialogs/" + encodeURIComponent(peer) + "/delivered", { upToMessageId: String(entry.upTo) }).catch(function () {});
    }, 300);
  };

  // The counters above are bumped at once; the server's count replaces them shortly
  // after (a burst, or a dialog list loaded mid-burst, cannot leave them wrong).
  Chat.prototype.syncUnreadLater = function (peer) {
    var self = this;
    var due = self.unreadDue || (self.unreadDue = {});
    if (due[peer]) return;
    due[peer] = setTimeout(function () {
      delete due[peer];
      Promise.all([self.api("GET", "/api/v1/unread?peer=" + encodeURIComponent(peer)), self.api("GET", "/api/v1/unread")]).then(function (r) {
        var d = self.dialogs[peer];
        if (d && !(self.current && self.current.peer === peer && self.isOpen)) d.unread = (r[0] && r[0].unread) || 0;
        self.unreadTotal = (r[1] && r[1].unread) || 0;
        self.unreadChanged(peer);
      }, function () {});
    }, 500);
  };

  Chat.prototype.onChanged = function (message) {
    if (!this.me || !message.id) return;
    var peer = this.peerOf(message);
    var d = this.dialogs[peer];
    if (d && d.lastMessage && d.lastMessage.id === message.id) { d.lastMessage = message; this.renderDialogs(); }
    if (this.current && this.current.peer === peer && this.current.messages[message.id]) this.addMessages([message]);
  };

  Chat.prototype.onReceipt = function (r) {
    // Receipts about my messages: the reader is the peer.
    if (!this.me || r.reader === this.me.user) return;
    var kind = r.kind === "read" ? "readAt" : "deliveredAt";
    var upTo = idNum(r.upToMessageId);
    var ids = {};
    (r.messageIds || []).forEach(function (id) { ids[id] = true; upTo = Math.max(upTo, idNum(id)); });
    var at = r.at || new Date().toISOString();
    // Kept, so a message whose bubble is still pending when the receipt comes gets it.
    var known = this.receipts[r.reader] || (this.receipts[r.reader] = {});
    if (!known[kind] || known[kind].upTo < upTo) known[kind] = { upTo: upTo, at: at };
    var c = this.current;
    if (c && c.peer === r.reader) {
      var self = this;
      Object.keys(c.messages).forEach(function (id) {
        var m = c.messages[id];
        if (m.from !== self.me.user) return;
        if (ids[id] || (upTo && idNum(id) <= upTo)) {
          if (!m[kind]) { m[kind] = at; if (kind === "readAt" && !m.deliveredAt) m.deliveredAt = at; self.renderTicks(m); }
        }
      });
    }
    var d = this.dialogs[r.reader];
    if (d && d.lastMessage && d.lastMessage.from === this.me.user && (ids[d.lastMessage.id] || idNum(d.lastMessage.id) <= upTo)) {
      d.lastMessage[kind] = at;
      this.renderDialogs();
    }
  };

  Chat.prototype.onTyping = function (t) {
    var self = this;
    if (!t.from || t.from === (self.me && self.me.user)) return;
    clearTimeout(self.typingTimers[t.from]);
    self.typingTimers[t.from] = setTimeout(function () { self.stopTyping(t.from); }, 4000);
    self.renderTyping();
  };

  Chat.prototype.stopTyping = function (peer) {
    clearTimeout(this.typingTimers[peer]);
    delete this.typingTimers[peer];
    this.renderTyping();
  };

  Chat.prototype.renderTyping = function () {
    var c = this.current;
    var typing = !!(c && this.typingTimers[c.peer]);
    this.ui.typing.hidden = !typing;
    var items = this.ui.dialogs.querySelectorAll(".sbc-dialog");
    for (var i = 0; i < items.length; i++) {
      items[i].classList.toggle("sbc-is-typing", !!this.typingTimers[items[i].getAttribute("data-peer")]);
    }
  };

  // --- sound -----------------------------------------------------------------------

  Chat.prototype.unlockAudio = function () {
    var Ctx = root.AudioContext || root.webkitAudioContext;
    if (!Ctx || this.audio) return;
    try { this.audio = new Ctx(); } catch (e) { this.audio = null; }
  };

  // At most one beep every 1.5 s, so a burst of messages is one sound.
  Chat.prototype.beep = function () {
    var now = Date.now();
    if (this.muted || now - (this.lastBeep || 0) < 1500) return;
    this.lastBeep = now;
    this.sounds = (this.sounds || 0) + 1;
    if (!this.audio) return;
    try {
      var ctx = this.audio;
      if (ctx.state === "suspended") ctx.resume();
      var osc = ctx.createOscillator();
      var gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.25);
      osc.connect(gain);
      gain.connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.3);
    } catch (e) { /* no audio */ }
  };

  Chat.prototype.setMuted = function (muted) {
    this.muted = !!muted;
    storageSet("sbc-muted", this.muted ? "1" : "0");
    this.ui.mute.setAttribute("aria-pressed", this.muted ? "true" : "false");
    this.ui.mute.setAttribute("aria-label", this.muted ? this.s.unmute : this.s.mute);
    this.ui.mute.title = this.muted ? this.s.unmute : this.s.mute;
    clear(this.ui.mute);
    this.ui.mute.appendChild(icon(this.muted ? "bellOff" : "bell"));
  };

  // --- unread ----------------------------------------------------------------------

  Chat.prototype.refreshUnread = function () {
    var self = this;
    return self.api("GET", "/api/v1/unread").then(function (r) {
      var total = (r && r.unread) || 0;
      if (total !== self.unreadTotal) { self.unreadTotal = total; self.unreadChanged(null); }
      else self.renderBadge();
    }, function () {});
  };

  Chat.prototype.unreadChanged = function (peer) {
    this.renderBadge();
    this.renderDialogs();
    this.emit("unread", { total: this.unreadTotal, peer: peer, count: peer ? this.countNewMessages(peer) : undefined });
  };

  Chat.prototype.countNewMessages = function (user) {
    var d = this.dialogs[String(user)];
    return (d && d.unread) || 0;
  };

  Chat.prototype.renderBadge = function () {
    var n = this.unreadTotal;
    this.ui.badge.textContent = n > 99 ? "99+" : String(n);
    this.ui.badge.hidden = !n;
    this.ui.launcher.setAttribute("aria-label", this.s.open + (n ? " (" + this.s.unreadCount.replace("{n}", n) + ")" : ""));
  };

  // --- dialogs ---------------------------------------------------------------------

  Chat.prototype.loadDialogs = function () {
    var self = this;
    var tab = self.tab;
    var filter = tab === "all" ? "" : "?filter=" + tab;
    var relations = tab === "all" ? Promise.resolve({ users: [] }) : self.api("GET", "/api/v1/relations/" + tab);
    return Promise.all([self.api("GET", "/api/v1/dialogs" + filter + (filter ? "&" : "?") + "pageSize=50"), relations]).then(function (res) {
      if (tab !== self.tab) return;
      var list = (res[0] && res[0].dialogs) || [];
      var order = [];
      list.forEach(function (d) {
        d.unread = d.unread || 0;
        self.dialogs[d.peer] = Object.assign(self.dialogs[d.peer] || {}, d);
        order.push(d.peer);
      });
      // Favourites or blocked users one never wrote with still show in their tab.
      ((res[1] && res[1].users) || []).forEach(function (u) {
        if (order.indexOf(u) >= 0) return;
        var d = self.dialogs[u] || (self.dialogs[u] = { peer: u, unread: 0 });
        d[tab === "favourites" ? "favourite" : "blocked"] = true;
        order.push(u);
      });
      self.order = order;
      self.loadUsers(order);
      self.renderDialogs();
      // Messages waiting for me reached this device: mark them delivered (the
      // first few dialogs: each is one request against the rate limit).
      list.slice(0, 10).forEach(function (d) {
        var m = d.lastMessage;
        if (d.unread && m && m.from === d.peer && !m.deliveredAt) {
          self.api("POST", "/api/v1/dialogs/" + encodeURIComponent(d.peer) + "/delivered", { upToMessageId: m.id }).catch(function () {});
        }
      });
    }, function (e) { self.showError(e); });
  };

  Chat.prototype.moveToTop = function (peer) {
    if (this.tab === "all") {
      this.order = [peer].concat(this.order.filter(function (p) { return p !== peer; }));
    }
    this.renderDialogs();
  };

  Chat.prototype.renderDialogs = function () {
    var self = this;
    if (!self.ui || self.searching) return;
    var ul = self.ui.dialogs;
    // Re-rendering keeps the keyboard focus on the same dialog.
    var focused = ul.contains(document.activeElement) ? document.activeElement.getAttribute("data-peer") : null;
    clear(ul);
    if (!self.order.length) {
      ul.appendChild(el("li", { class: "sbc-empty", text: self.s.noDialogs }));
      return;
    }
    self.order.forEach(function (peer) {
      var d = self.dialogs[peer];
      if (!d) return;
      var m = d.lastMessage;
      var preview = "";
      if (m) {
        preview = m.deletedAt ? self.s.deleted : (m.text || (m.attachment ? self.s.image : ""));
        if (m.from === self.me.user) preview = self.s.you + preview;
      }
      var button = el("button", {
        type: "button", class: "sbc-dialog" + (self.current && self.current.peer === peer ? " sbc-active" : ""),
        "data-peer": peer, onclick: function () { self.openDialog(peer); }
      },
        avatar(self.name(peer)),
        el("span", { class: "sbc-dialog-main" },
          el("span", { class: "sbc-dialog-name", text: self.name(peer) }),
          el("span", { class: "sbc-dialog-preview", text: preview }),
          el("span", { class: "sbc-dialog-typing", text: self.s.typing })),
        d.favourite ? el("span", { class: "sbc-star", "aria-hidden": "true", text: "\u2605" }) : null,
        d.unread ? el("span", { class: "sbc-unread", "aria-label": self.s.unreadCount.replace("{n}", d.unread), text: String(d.unread) }) : null);
      ul.appendChild(el("li", null, button));
      if (peer === focused) button.focus();
    });
    self.renderTyping();
  };

  function avatar(name) {
    var letters = String(name).trim().split(/\s+/).map(function (w) { return Array.from(w)[0] || ""; }).join("").slice(0, 2).toUpperCase();
    var hue = 0;
    for (var i = 0; i < name.length; i++) hue = (hue * 31 + name.charCodeAt(i)) % 360;
    var node = el("span", { class: "sbc-avatar", "aria-hidden": "true", text: letters || "?" });
    node.style.backgroundColor = "hsl(" + hue + ",45%,45%)";
    return node;
  }

  Chat.prototype.renderNames = function () {
    this.renderDialogs();
    if (this.current) this.ui.peerName.textContent = this.name(this.current.peer);
  };

  Chat.prototype.setTab = function (tab) {
    this.tab = tab;
    var tabs = this.ui.tabs.querySelectorAll("[role=tab]");
    for (var i = 0; i < tabs.length; i++) {
      var on = tabs[i].getAttribute("data-tab") === tab;
      tabs[i].setAttribute("aria-selected", on ? "true" : "false");
      tabs[i].tabIndex = on ? 0 : -1;
    }
    this.order = [];
    this.renderDialogs();
    return this.loadDialogs();
  };

  Chat.prototype.search = function (q) {
    var self = this;
    q = q.trim();
    clearTimeout(self.searchTimer);
    if (!q) {
      self.searching = false;
      self.ui.results.hidden = true;
      self.ui.dialogs.hidden = false;
      self.renderDialogs();
      return;
    }
    self.searchTimer = setTimeout(function () {
      self.api("GET", "/api/v1/contacts?q=" + encodeURIComponent(q)).then(function (r) {
        if (self.ui.search.value.trim() !== q) return;
        self.searching = true;
        self.ui.dialogs.hidden = true;
        self.ui.results.hidden = false;
        clear(self.ui.results);
        var users = ((r && r.users) || []).filter(function (u) { return u.id !== self.me.user; });
        users.forEach(function (u) { self.users[u.id] = u; });
        if (!users.length) self.ui.results.appendChild(el("li", { class: "sbc-empty", text: self.s.noResults }));
        users.forEach(function (u) {
          self.ui.results.appendChild(el("li", null, el("button", {
            type: "button", class: "sbc-dialog", "data-peer": u.id,
            onclick: function () { self.ui.search.value = ""; self.search(""); self.openDialog(u.id); }
          }, avatar(self.name(u.id)), el("span", { class: "sbc-dialog-main" },
            el("span", { class: "sbc-dialog-name", text: self.name(u.id) }),
            el("span", { class: "sbc-dialog-preview", text: u.login && u.login !== u.name ? u.login : (u.city || "") })))));
        });
      }, function (e) { self.showError(e); });
    }, 250);
  };

  // --- the open dialog -----------------------------------------------------------

  Chat.prototype.openDialog = function (peer) {
    this.unlockAudio();
    this.show(true);
    if (peer === undefined || peer === null || peer === "") {
      this.focusInside();
      return Promise.resolve();
    }
    peer = String(peer);
    if (this.me && peer === this.me.user) return Promise.resolve();
    if (this.current && this.current.peer === peer) {
      this.markRead();
      this.focusInside();
      return Promise.resolve();
    }
    this.current = { peer: peer, messages: {}, pending: {}, nextCursor: "", hasMore: true, loading: false };
    if (!this.dialogs[peer]) this.dialogs[peer] = { peer: peer, unread: 0 };
    this.loadUsers([peer]);
    this.ui.root.classList.add("sbc-in-dialog");
    this.ui.pane.hidden = false;
    this.ui.peerName.textContent = this.name(peer);
    clear(this.ui.messages);
    this.ui.messages.appendChild(this.ui.older);
    this.renderDialogHeader();
    this.renderDialogs();
    this.renderTyping();
    this.focusInside();
    return this.loadHistory(false);
  };

  Chat.prototype.closeDialog = function () {
    this.current = null;
    this.ui.root.classList.remove("sbc-in-dialog");
    this.ui.pane.hidden = true;
    this.renderDialogs();
    this.focusInside();
  };

  Chat.prototype.renderDialogHeader = function () {
    var c = this.current;
    if (!c) return;
    var d = this.dialogs[c.peer] || {};
    var s = this.s;
    this.ui.favBtn.setAttribute("aria-pressed", d.favourite ? "true" : "false");
    this.ui.favBtn.title = d.favourite ? s.unfavourite : s.favourite;
    this.ui.favBtn.setAttribute("aria-label", this.ui.favBtn.title);
    this.ui.favBtn.textContent = d.favourite ? "\u2605" : "\u2606";
    this.ui.blockBtn.textContent = d.blocked ? s.unblock : s.block;
    this.ui.blockBtn.setAttribute("aria-pressed", d.blocked ? "true" : "false");
    this.ui.blockedNote.textContent = d.blocked ? s.youBlocked : "";
    this.ui.blockedNote.hidden = !d.blocked;
    this.ui.input.disabled = !!d.blocked;
    this.ui.sendBtn.disabled = !!d.blocked;
    this.ui.attachBtn.disabled = !!d.blocked;
  };

  // Loads the newest page (fresh) or the next older one.
  Chat.prototype.loadHistory = function (fresh) {
    var self = this;
    var c = self.current;
    if (!c || c.loading || (!fresh && !c.hasMore)) return Promise.resolve();
    c.loading = true;
    self.ui.older.hidden = false;
    var cursor = fresh ? "" : c.nextCursor;
    var path = "/api/v1/dialogs/" + encodeURIComponent(c.peer) + "/messages?pageSize=30" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    var box = self.ui.messages;
    var fromBottom = box.scrollHeight - box.scrollTop;
    return self.api("GET", path).then(function (r) {
      if (self.current !== c) return;
      var messages = (r && r.messages) || [];
      if (!fresh || !c.nextCursor) {
        c.nextCursor = (r && r.page && r.page.nextCursor) || "";
        c.hasMore = !!(r && r.page && r.page.hasMore);
      }
      self.addMessages(messages);
      if (fresh) box.scrollTop = box.scrollHeight; else box.scrollTop = box.scrollHeight - fromBottom;
      if (fresh || !cursor) self.markRead();
    }, function (e) { self.showError(e); }).then(function () {
      c.loading = false;
      self.ui.older.hidden = true;
      // Not enough to scroll yet: keep loading older pages.
      if (self.current === c && c.hasMore && box.scrollHeight <= box.clientHeight + 40) return self.loadHistory(false);
    });
  };

  Chat.prototype.markRead = function () {
    var self = this;
    var c = self.current;
    if (!c || !self.isOpen) return;
    var newest = 0;
    Object.keys(c.messages).forEach(function (id) {
      var m = c.messages[id];
      if (m.from === c.peer && !m.readAt && idNum(id) > newest) newest = idNum(id);
    });
    var d = self.dialogs[c.peer];
    if (!newest && !(d && d.unread)) return;
    var body = newest ? { upToMessageId: String(newest) } : {};
    self.api("POST", "/api/v1/dialogs/" + encodeURIComponent(c.peer) + "/read", body).then(function () {
      Object.keys(c.messages).forEach(function (id) {
        if (c.messages[id].from === c.peer && idNum(id) <= newest) c.messages[id].readAt = c.messages[id].readAt || new Date().toISOString();
      });
      if (d && d.unread) { d.unread = 0; }
      return self.refreshUnread().then(function () { self.unreadChanged(c.peer); });
    }, function () {});
  };

  Chat.prototype.addMessages = function (messages) {
    var self = this;
    var c = self.current;
    var box = self.ui.messages;
    var atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    messages.forEach(function (m) {
      if (!m || !m.id) return;
      // A message I sent from this tab replaces its pending bubble.
      var pendingNode = m.clientId && c.pending[m.clientId] && c.pending[m.clientId].node;
      c.messages[m.id] = Object.assign(c.messages[m.id] || {}, m);
      self.applyReceipts(c.messages[m.id]);
      var node = self.renderMessage(c.messages[m.id]);
      var old = box.querySelector('[data-id="' + CSS.escape(m.id) + '"]') || pendingNode;
      if (pendingNode && m.clientId) delete c.pending[m.clientId];
      if (old) {
        box.replaceChild(node, old);
        return;
      }
      // Insert in id order (history pages arrive newest first).
      var items = box.querySelectorAll(".sbc-msg[data-id]");
      var before = null;
      for (var i = 0; i < items.length; i++) {
        if (idNum(items[i].getAttribute("data-id")) > idNum(m.id)) { before = items[i]; break; }
      }
      if (!before) before = box.querySelector(".sbc-msg.sbc-pending");
      box.insertBefore(node, before);
    });
    if (atBottom) box.scrollTop = box.scrollHeight;
  };

  // Receipts that came before the message was shown (see onReceipt).
  Chat.prototype.applyReceipts = function (m) {
    var known = m.from === this.me.user && this.receipts[m.to];
    if (!known) return;
    ["deliveredAt", "readAt"].forEach(function (kind) {
      if (!m[kind] && known[kind] && idNum(m.id) <= known[kind].upTo) m[kind] = known[kind].at;
    });
    if (m.readAt && !m.deliveredAt) m.deliveredAt = m.readAt;
  };

  function time(iso) {
    var d = iso ? new Date(iso) : new Date();
    if (isNaN(d.getTime())) return "";
    var now = new Date();
    var sameDay = d.toDateString() === now.toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  Chat.prototype.renderMessage = function (m) {
    var self = this;
    var mine = m.from === self.me.user;
    var node = el("div", { class: "sbc-msg " + (mine ? "sbc-mine" : "sbc-theirs"), "data-id": m.id, role: "article" });
    var bubble = el("div", { class: "sbc-bubble" });
    node.appendChild(bubble);
    if (m.deletedAt) {
      bubble.appendChild(el("div", { class: "sbc-text sbc-deleted", text: self.s.deleted }));
    } else {
      if (m.attachment) bubble.appendChild(self.renderImage(m.attachment));
      if (m.text) bubble.appendChild(el("div", { class: "sbc-text", text: m.text }));
    }
    var meta = el("div", { class: "sbc-meta" }, el("time", { datetime: m.createdAt || "", text: time(m.createdAt) }));
    if (m.editedAt && !m.deletedAt) meta.appendChild(el("span", { class: "sbc-edited", text: self.s.edited }));
    if (mine) meta.appendChild(el("span", { class: "sbc-ticks" }));
    bubble.appendChild(meta);
    if (!mine && !m.deletedAt) {
      var actions = el("div", { class: "sbc-msg-actions" });
      if (self.me.translate && m.text) {
        var out = el("div", { class: "sbc-translation", hidden: true, lang: self.lang });
        bubble.insertBefore(out, meta);
        actions.appendChild(el("button", {
          type: "button", class: "sbc-link sbc-translate", text: self.s.translate,
          onclick: function (e) { self.translate(m, out, e.currentTarget); }
        }));
      }
      actions.appendChild(el("button", {
        type: "button", class: "sbc-link sbc-complain-msg", text: self.s.complain, title: self.s.complainAbout,
        onclick: function () { self.openComplaint(m.id); }
      }));
      node.appendChild(actions);
    }
    if (mine) self.renderTicks(m, node);
    return node;
  };

  Chat.prototype.renderTicks = function (m, node) {
    node = node || this.ui.messages.querySelector('[data-id="' + CSS.escape(m.id) + '"]');
    var ticks = node && node.querySelector(".sbc-ticks");
    if (!ticks) return;
    var status = m.readAt ? "read" : m.deliveredAt ? "delivered" : "sent";
    ticks.setAttribute("data-status", status);
    ticks.textContent = status === "sent" ? "\u2713" : "\u2713\u2713";
    ticks.title = this.s[status];
    ticks.setAttribute("aria-label", this.s[status]);
  };

  Chat.prototype.renderImage = function (attachment) {
    var self = this;
    var img = el("img", { class: "sbc-image", alt: self.s.image, width: attachment.width || undefined, height: attachment.height || undefined });
    var link = el("button", { type: "button", class: "sbc-image-button", "aria-label": self.s.image }, img);
    var thumb = attachment.thumbnailUrl || attachment.url;
    if (thumb) self.blobUrl(thumb).then(function (url) { img.src = url; }, function () { img.alt = self.s.error; });
    link.addEventListener("click", function () {
      if (!attachment.url) return;
      self.blobUrl(attachment.url).then(function (url) { self.showLightbox(url); });
    });
    return link;
  };

  Chat.prototype.showLightbox = function (url) {
    var self = this;
    var box = el("div", { class: "sbc-lightbox", role: "dialog", "aria-modal": "true", "aria-label": self.s.image },
      el("img", { src: url, alt: self.s.image }));
    var closeBtn = el("button", { type: "button", class: "sbc-icon sbc-lightbox-close", "aria-label": self.s.close, text: "\u2715" });
    box.appendChild(closeBtn);
    var close = function () { if (box.parentNode) box.parentNode.removeChild(box); self.focusInside(); };
    closeBtn.addEventListener("click", close);
    box.addEventListener("click", function (e) { if (e.target === box) close(); });
    box.addEventListener("keydown", function (e) { if (e.key === "Escape") { e.stopPropagation(); close(); } });
    self.ui.panel.appendChild(box);
    closeBtn.focus();
  };

  Chat.prototype.translate = function (m, out, button) {
    var self = this;
    button.disabled = true;
    out.hidden = false;
    out.textContent = self.s.translating;
    self.api("GET", "/api/v1/messages/" + encodeURIComponent(m.id) + "/translation?lang=" + self.lang).then(function (r) {
      out.textContent = (r && r.text) || "";
      button.hidden = true;
    }, function (e) {
      out.textContent = e.message || self.s.error;
      button.disabled = false;
    });
  };

  // --- sending ---------------------------------------------------------------------

  Chat.prototype.pickImage = function (file) {
    if (!file) return;
    if (!/^image\//.test(file.type)) { this.toast(this.s.notImage); return; }
    this.clearImage();
    this.image = { file: file, url: URL.createObjectURL(file) };
    clear(this.ui.preview);
    this.ui.preview.appendChild(el("img", { src: this.image.url, alt: this.s.image }));
    var self = this;
    this.ui.preview.appendChild(el("button", {
      type: "button", class: "sbc-icon sbc-preview-remove", "aria-label": this.s.removeImage, title: this.s.removeImage, text: "\u2715",
      onclick: function () { self.clearImage(); self.ui.input.focus(); }
    }));
    this.ui.preview.hidden = false;
  };

  Chat.prototype.clearImage = function () {
    if (this.image) URL.revokeObjectURL(this.image.url);
    this.image = null;
    clear(this.ui.preview);
    this.ui.preview.hidden = true;
    this.ui.file.value = "";
  };

  Chat.prototype.sendCurrent = function () {
    var c = this.current;
    if (!c) return;
    var text = this.ui.input.value;
    if (!text.trim() && !this.image) return;
    var job = { clientId: newClientId(), peer: c.peer, text: text.trim() ? text : "", file: this.image && this.image.file, previewUrl: this.image && this.image.url, attachmentId: "" };
    this.image = null;
    clear(this.ui.preview);
    this.ui.preview.hidden = true;
    this.ui.file.value = "";
    this.ui.input.value = "";
    this.autosize();
    this.runSend(job);
  };

  Chat.prototype.runSend = function (job) {
    var self = this;
    var c = self.current;
    if (!c || c.peer !== job.peer) return;
    var entry = c.pending[job.clientId];
    if (!entry) {
      entry = c.pending[job.clientId] = { job: job };
      entry.node = el("div", { class: "sbc-msg sbc-mine sbc-pending", "data-client-id": job.clientId });
      self.ui.messages.appendChild(entry.node);
    }
    var node = entry.node;
    clear(node);
    node.classList.remove("sbc-failed");
    var bubble = el("div", { class: "sbc-bubble" });
    if (job.previewUrl) bubble.appendChild(el("img", { class: "sbc-image", src: job.previewUrl, alt: self.s.image }));
    var progress = job.file && !job.attachmentId ? el("progress", { class: "sbc-progress", max: "100", value: "0", "aria-label": self.s.sending }) : null;
    if (progress) bubble.appendChild(progress);
    if (job.text) bubble.appendChild(el("div", { class: "sbc-text", text: job.text }));
    var status = el("div", { class: "sbc-meta" }, el("span", { class: "sbc-status", text: self.s.sending }));
    bubble.appendChild(status);
    node.appendChild(bubble);
    self.ui.messages.scrollTop = self.ui.messages.scrollHeight;

    var uploaded = job.file && !job.attachmentId
      ? self.upload(job.file, function (f) { progress.value = Math.round(f * 100); }).then(function (a) { job.attachmentId = a.id; })
      : Promise.resolve();
    uploaded.then(function () {
      return self.api("POST", "/api/v1/messages", { to: job.peer, text: job.text, clientId: job.clientId, attachmentId: job.attachmentId });
    }).then(function (r) {
      if (job.previewUrl) { URL.revokeObjectURL(job.previewUrl); job.previewUrl = ""; }
      var m = r && r.message;
      if (m) {
        if (self.current === c) self.addMessages([m]);
        var d = self.dialogs[job.peer] || (self.dialogs[job.peer] = { peer: job.peer, unread: 0 });
        if (!d.lastMessage || idNum(d.lastMessage.id) < idNum(m.id)) d.lastMessage = m;
        if (self.order.indexOf(job.peer) < 0 && self.tab === "all") self.order.unshift(job.peer);
        self.moveToTop(job.peer);
      }
    }, function (e) {
      if (self.current !== c) return;
      node.classList.add("sbc-failed");
      clear(status);
      var permanent = e.reason === "blocked" || e.status === 400 || e.status === 413 || e.status === 403;
      var message = e.reason === "blocked" ? self.s.blockedYou : e.status === 413 ? self.s.tooLarge : (e.status ? e.message : self.s.failed);
      status.appendChild(el("span", { class: "sbc-status sbc-error", role: "alert", text: self.s.failed + (message && message !== self.s.failed ? ": " + message : "") }));
      if (!permanent) {
        status.appendChild(el("button", { type: "button", class: "sbc-link sbc-retry", text: self.s.retry, onclick: function () { self.runSend(job); } }));
      }
    });
  };

  Chat.prototype.typed = function () {
    var c = this.current;
    this.autosize();
    if (!c || !this.ui.input.value) return;
    var now = Date.now();
    if (now - this.lastTypingSent < 3000) return;
    this.lastTypingSent = now;
    this.api("POST", "/api/v1/dialogs/" + encodeURIComponent(c.peer) + "/typing").catch(function () {});
  };

  Chat.prototype.autosize = function () {
    var input = this.ui.input;
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 120) + "px";
  };

  // --- relations and complaints ----------------------------------------------------

  Chat.prototype.toggleRelation = function (kind) {
    var self = this;
    var c = self.current;
    if (!c) return Promise.resolve();
    var d = self.dialogs[c.peer] || (self.dialogs[c.peer] = { peer: c.peer });
    var key = kind === "favourite" ? "favourite" : "blocked";
    var on = !d[key];
    return self.api(on ? "PUT" : "DELETE", "/api/v1/relations/" + kind + "/" + encodeURIComponent(c.peer)).then(function () {
      d[key] = on;
      self.renderDialogHeader();
      if (self.tab !== "all") self.loadDialogs(); else self.renderDialogs();
    }, function (e) { self.showError(e); });
  };

  Chat.prototype.openComplaint = function (messageId) {
    var self = this;
    var c = self.current;
    if (!c) return;
    var s = self.s;
    var reasons = [["spam", s.reasonSpam], ["abuse", s.reasonAbuse], ["fraud", s.reasonFraud], ["other", s.reasonOther]];
    var select = el("select", { class: "sbc-select", id: "sbc-reason" });
    reasons.forEach(function (r) { select.appendChild(el("option", { value: r[0], text: r[1] })); });
    var details = el("textarea", { class: "sbc-textarea", id: "sbc-details", rows: "3", maxlength: "1000" });
    var form = el("form", { class: "sbc-sheet", role: "dialog", "aria-modal": "true", "aria-label": messageId ? s.complainAbout : s.complain },
      el("h3", { text: (messageId ? s.complainAbout : s.complain) + " — " + self.name(c.peer) }),
      el("label", { for: "sbc-reason", text: s.reason }), select,
      el("label", { for: "sbc-details", text: s.details }), details,
      el("div", { class: "sbc-sheet-buttons" },
        el("button", { type: "button", class: "sbc-button sbc-secondary", text: s.cancel, onclick: function () { close(); } }),
        el("button", { type: "submit", class: "sbc-button", text: s.complain })));
    var close = function () { if (form.parentNode) form.parentNode.removeChild(form); self.focusInside(); };
    form.addEventListener("keydown", function (e) { if (e.key === "Escape") { e.stopPropagation(); close(); } });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      // The reason's code (not the translated label) so admins read one language.
      var reason = select.value + (details.value.trim() ? ": " + details.value.trim() : "");
      self.api("POST", "/api/v1/complaints", { targetUser: c.peer, messageId: messageId || "", reason: reason }).then(function () {
        close();
        self.toast(s.complaintSent);
      }, function (err) { self.showError(err); });
    });
    self.ui.panel.appendChild(form);
    select.focus();
  };

  // --- feedback --------------------------------------------------------------------

  Chat.prototype.toast = function (text) {
    var t = this.ui.toast;
    t.textContent = text;
    t.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(function () { t.hidden = true; }, 4000);
  };

  Chat.prototype.showError = function (e) {
    if (e && e.status === 401) { this.setLive("signedOut"); return; }
    this.toast((e && e.status && e.message) || this.s.error);
  };

  // --- open / close ------------------------------------------------------------------

  Chat.prototype.show = function (open) {
    this.isOpen = open;
    this.ui.root.classList.toggle("sbc-open", open);
    this.ui.panel.hidden = !open;
    this.ui.launcher.setAttribute("aria-expanded", open ? "true" : "false");
    // The focus follows: into the panel (the launcher hides), back to the launcher.
    if (open) {
      this.markRead();
      this.focusInside();
    } else {
      this.ui.launcher.focus();
    }
    this.emit(open ? "open" : "close", {});
  };

  // Moves the focus into the panel: the message field or the search with a mouse and
  // keyboard; the selected tab or the dialog's back button on touch screens, where
  // focusing a text field would pop the on-screen keyboard over the messages.
  Chat.prototype.focusInside = function () {
    var touch = root.matchMedia && root.matchMedia("(pointer: coarse)").matches;
    var target;
    if (this.current) target = touch ? this.ui.backBtn : (this.ui.input.disabled ? this.ui.favBtn : this.ui.input);
    else target = touch ? this.ui.tabs.querySelector('[aria-selected="true"]') : this.ui.search;
    if (target && target.offsetParent === null) target = this.ui.closeBtn;
    if (target) target.focus();
  };

  Chat.prototype.destroy = function () {
    if (this.push) this.push.close();
    if (this.onVisibility) document.removeEventListener("visibilitychange", this.onVisibility);
    var timers = [this.toastTimer, this.searchTimer];
    [this.typingTimers, this.unreadDue || {}].forEach(function (map) {
      Object.keys(map).forEach(function (k) { timers.push(map[k]); });
    });
    Object.keys(this.deliveries || {}).forEach(function (k) { timers.push(this.deliveries[k].timer); }, this);
    timers.forEach(function (t) { clearTimeout(t); });
    if (this.ui && this.ui.root.parentNode) this.ui.root.parentNode.removeChild(this.ui.root);
    var blobs = this.blobs;
    Object.keys(blobs).forEach(function (k) { blobs[k].then(function (u) { URL.revokeObjectURL(u); }, function () {}); });
    this.destroyed = true;
  };

  // --- the DOM -----------------------------------------------------------------------

  Chat.prototype.build = function () {
    var self = this;
    var s = self.s;
    var ui = self.ui = {};
    ui.badge = el("span", { class: "sbc-badge", hidden: true });
    ui.launcher = el("button", { type: "button", class: "sbc-launcher", "aria-expanded": "false", "aria-label": s.open, title: s.chat,
      onclick: function () { self.unlockAudio(); self.show(!self.isOpen); } }, icon("chat"), ui.badge);
    ui.live = el("span", { class: "sbc-live", role: "status", hidden: true });
    ui.mute = el("button", { type: "button", class: "sbc-icon sbc-mute", onclick: function () { self.unlockAudio(); self.setMuted(!self.muted); } });
    var closeBtn = ui.closeBtn = el("button", { type: "button", class: "sbc-icon sbc-close", "aria-label": s.close, title: s.close, text: "\u2715", onclick: function () { self.show(false); } });

    ui.tabs = el("div", { class: "sbc-tabs", role: "tablist" });
    ["all", "favourites", "blocked"].forEach(function (tab) {
      ui.tabs.appendChild(el("button", { type: "button", role: "tab", class: "sbc-tab", "data-tab": tab, "aria-selected": tab === "all" ? "true" : "false",
        tabindex: tab === "all" ? "0" : "-1", text: s[tab], onclick: function () { self.setTab(tab); } }));
    });
    ui.tabs.addEventListener("keydown", function (e) {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      var tabs = ["all", "favourites", "blocked"];
      var next = tabs[(tabs.indexOf(self.tab) + (e.key === "ArrowRight" ? 1 : 2)) % 3];
      self.setTab(next);
      ui.tabs.querySelector('[data-tab="' + next + '"]').focus();
    });
    ui.search = el("input", { type: "search", class: "sbc-search", placeholder: s.search, "aria-label": s.search, autocomplete: "off",
      oninput: function () { self.search(ui.search.value); } });
    ui.dialogs = el("ul", { class: "sbc-dialogs", "aria-label": s.chat });
    ui.results = el("ul", { class: "sbc-dialogs sbc-results", hidden: true, "aria-label": s.search });
    var list = el("nav", { class: "sbc-list" }, ui.tabs, ui.search, ui.dialogs, ui.results);

    ui.peerName = el("span", { class: "sbc-peer-name" });
    ui.typing = el("span", { class: "sbc-typing", hidden: true, "aria-live": "polite", text: s.typing });
    ui.favBtn = el("button", { type: "button", class: "sbc-icon sbc-fav", onclick: function () { self.toggleRelation("favourite"); } });
    ui.blockBtn = el("button", { type: "button", class: "sbc-button sbc-secondary sbc-block", onclick: function () { self.toggleRelation("blocked"); } });
    var complainBtn = el("button", { type: "button", class: "sbc-button sbc-secondary sbc-complain", text: s.complain, onclick: function () { self.openComplaint(""); } });
    var backBtn = ui.backBtn = el("button", { type: "button", class: "sbc-icon sbc-back", "aria-label": s.back, title: s.back, text: "\u2190", onclick: function () { self.closeDialog(); } });
    ui.older = el("div", { class: "sbc-older", hidden: true, text: s.loadingOlder });
    ui.messages = el("div", { class: "sbc-messages", role: "log", "aria-live": "polite", tabindex: "0" });
    ui.messages.addEventListener("scroll", function () { if (ui.messages.scrollTop < 80) self.loadHistory(false); });
    ui.blockedNote = el("div", { class: "sbc-note", hidden: true });
    ui.preview = el("div", { class: "sbc-preview", hidden: true });
    ui.file = el("input", { type: "file", accept: "image/*", class: "sbc-file", tabindex: "-1", "aria-hidden": "true",
      onchange: function () { self.pickImage(ui.file.files && ui.file.files[0]); } });
    ui.attachBtn = el("button", { type: "button", class: "sbc-icon sbc-attach", "aria-label": s.attach, title: s.attach, onclick: function () { ui.file.click(); } }, icon("clip"));
    ui.input = el("textarea", { class: "sbc-input", rows: "1", placeholder: s.write, "aria-label": s.write, maxlength: "4000",
      oninput: function () { self.typed(); } });
    ui.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); self.sendCurrent(); }
    });
    ui.input.addEventListener("paste", function (e) {
      var items = (e.clipboardData && e.clipboardData.files) || [];
      if (items.length) { e.preventDefault(); self.pickImage(items[0]); }
    });
    ui.sendBtn = el("button", { type: "submit", class: "sbc-button sbc-send", text: s.send });
    var compose = el("form", { class: "sbc-compose", onsubmit: function (e) { e.preventDefault(); self.sendCurrent(); } },
      ui.preview, el("div", { class: "sbc-compose-row" }, ui.attachBtn, ui.file, ui.input, ui.sendBtn));
    ui.pane = el("section", { class: "sbc-pane", hidden: true },
      el("header", { class: "sbc-pane-header" }, backBtn, el("span", { class: "sbc-peer" }, ui.peerName, ui.typing),
        ui.favBtn, ui.blockBtn, complainBtn),
      ui.messages, ui.blockedNote, compose);
    ui.toast = el("div", { class: "sbc-toast", role: "status", hidden: true });
    ui.panel = el("section", { class: "sbc-panel", role: "dialog", "aria-label": s.chat, hidden: true },
      el("header", { class: "sbc-header" }, el("h2", { class: "sbc-title", text: s.chat }), ui.live, ui.mute, closeBtn),
      el("div", { class: "sbc-body" }, list, ui.pane), ui.toast);
    ui.panel.addEventListener("keydown", function (e) {
      if (e.key !== "Escape") return;
      if (self.current && root.matchMedia && root.matchMedia("(max-width: 600px)").matches) self.closeDialog();
      else self.show(false);
    });
    ui.root = el("div", { class: "sbc-root", lang: self.lang }, ui.panel, ui.launcher);
    self.setMuted(self.muted);
    (self.options.container || document.body).appendChild(ui.root);
    self.onVisibility = function () { if (!document.hidden) self.markRead(); };
    document.addEventListener("visibilitychange", self.onVisibility);
    self.renderBadge();
  };

  // --- the public API ---------------------------------------------------------------

  var instance = null;

  function need() {
    if (!instance) throw new Error("call SwitchboardChat.init first");
    return instance;
  }

  var SwitchboardChat = {
    strings: STRINGS,
    // init({server, token | getToken, push, open, lang, container, success, error})
    init: function (options) {
      options = options || {};
      if (instance) instance.destroy();
      var chat = instance = new Chat(options);
      return chat.start().then(function () {
        if (typeof options.success === "function") options.success(SwitchboardChat);
        return SwitchboardChat;
      }, function (e) {
        if (e && e.status === 401) chat.setLive("signedOut"); else chat.showError(e);
        if (typeof options.error === "function") options.error(e);
        throw e;
      });
    },
    countNewMessagesSum: function () { return need().unreadTotal; },
    countNewMessages: function (user) { return need().countNewMessages(user); },
    openDialog: function (user) { return need().openDialog(user); },
    close: function () { need().show(false); },
    // Events: "message" {message, peer}, "unread" {total, peer, count}, "state"
    // {state}, "open", "close".
    on: function (event, handler) { (handlers[event] = handlers[event] || []).push(handler); return SwitchboardChat; },
    off: function (event, handler) {
      handlers[event] = (handlers[event] || []).filter(function (h) { return h !== handler; });
      return SwitchboardChat;
    },
    setMuted: function (muted) { need().setMuted(muted); },
    isMuted: function () { return need().muted; },
    user: function () { return need().me ? need().me.user : null; },
    soundsPlayed: function () { return need().sounds || 0; },
    state: function () { return need().liveState; },
    destroy: function () { if (instance) instance.destroy(); instance = null; }
  };

  root.SwitchboardChat = SwitchboardChat;
})(typeof globalThis !== "undefined" ? globalThis : this);
