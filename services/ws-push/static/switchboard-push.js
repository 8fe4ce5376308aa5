// switchboard-push.js: the browser client of Switchboard ws-push. No dependencies.
// Script tag:   <script src="/client.js"></script> then window.SwitchboardPush
// ESM:          import { SwitchboardPush } from "/client.mjs"; (the same code plus exports)
// Protocol and close codes: docs/ws-push.md.
(function (root) {
  "use strict";

  // Close codes after which reconnecting with the same token cannot help.
  var FATAL = { 4002: "bad token", 4008: "too many connections", 4010: "forbidden" };

  function SwitchboardPush(url, options) {
    if (!(this instanceof SwitchboardPush)) return new SwitchboardPush(url, options);
    options = options || {};
    this.url = url;
    this.token = options.token || "";
    // async () => string: called for a fresh token before expiry and after 4003.
    this.getToken = options.getToken || null;
    this.minDelay = options.minDelay || 250;
    this.maxDelay = options.maxDelay || 10000;
    this.handlers = {};
    this.channels = {}; // name -> { offset, epoch }
    this.offsets = {}; // "user"/"all" -> offset
    this.epoch = "";
    this.pending = {};
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this.closed = false;
    this.state = "disconnected";
    this.refreshTimer = null;
  }

  SwitchboardPush.prototype.on = function (event, handler) {
    (this.handlers[event] = this.handlers[event] || []).push(handler);
    return this;
  };

  SwitchboardPush.prototype.emit = function (event, payload) {
    var list = this.handlers[event] || [];
    for (var i = 0; i < list.length; i++) {
      try { list[i](payload); } catch (e) { if (root.console) root.console.error(e); }
    }
  };

  SwitchboardPush.prototype.setState = function (state, detail) {
    this.state = state;
    this.emit("state", { state: state, detail: detail });
  };

  SwitchboardPush.prototype.connect = function () {
    var self = this;
    self.closed = false;
    var ready = self.token || !self.getToken ? Promise.resolve(self.token) : Promise.resolve(self.getToken());
    ready.then(function (token) {
      self.token = token;
      self.open();
    }, function (e) { self.emit("error", { code: "token", message: String(e) }); self.schedule(); });
    return self;
  };

  SwitchboardPush.prototype.open = function () {
    var self = this;
    if (self.closed) return;
    self.setState("connecting");
    var ws = new WebSocket(self.url);
    self.ws = ws;
    ws.onopen = function () {
      var hello = { type: "connect", token: self.token };
      if (self.epoch) hello.recover = { epoch: self.epoch, offsets: self.offsets };
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      self.dispatch(message);
    };
    ws.onclose = function (event) {
      self.ws = null;
      clearTimeout(self.refreshTimer);
      var pending = self.pending;
      self.pending = {};
      Object.keys(pending).forEach(function (id) { pending[id].reject(new Error("disconnected")); });
      self.setState("disconnected", { code: event.code, reason: event.reason });
      if (self.closed) return;
      if (FATAL[event.code]) {
        self.closed = true;
        self.emit("error", { code: event.code, message: FATAL[event.code] });
        return;
      }
      if (event.code === 4003 || event.code === 4007) self.token = "";
      if (event.code === 4007) { self.closed = true; return; }
      self.schedule();
    };
  };

  SwitchboardPush.prototype.schedule = function () {
    var self = this;
    var ceiling = Math.min(self.maxDelay, self.minDelay * Math.pow(2, self.attempt));
    self.attempt++;
    var delay = Math.random() * ceiling; // full jitter
    setTimeout(function () {
      if (self.closed) return;
      if (!self.token && self.getToken) self.connect(); else self.open();
    }, delay);
  };

  SwitchboardPush.prototype.dispatch = function (m) {
    var self = this;
    switch (m.type) {
      case "connected":
        self.attempt = 0;
        var asked = !!self.epoch;
        if (m.recovered !== true) self.offsets = { user: m.offset, all: m.offset };
        self.epoch = m.epoch;
        self.setState("connected", m);
        self.emit("connected", m);
        if (asked && m.recovered !== true) self.emit("recovery-failed", { source: "user" });
        self.scheduleRefresh(m.expires);
        Object.keys(self.channels).forEach(function (name) {
          self.sendSubscribe(name).catch(function (e) { self.emit("error", { code: e.code, message: e.message, channel: name }); });
        });
        break;
      case "push":
        var key = m.source.indexOf("channel:") === 0 ? m.source.slice(8) : null;
        if (key !== null) {
          var ch = self.channels[key];
          if (!ch) return;
          if (ch.offset !== undefined && m.offset <= ch.offset) return;
          ch.offset = m.offset; ch.epoch = m.epoch;
        } else {
          if (self.offsets[m.source] !== undefined && m.offset <= self.offsets[m.source]) return;
          self.offsets[m.source] = m.offset;
        }
        self.emit("push", m);
        if (m.push && m.push.type) self.emit("push:" + m.push.type, m);
        break;
      case "subscribed":
        var c = self.channels[m.channel];
        if (c) {
          // Recovered: the missed pushes follow and carry their offsets. Otherwise
          // start from the position the server gave.
          if (m.recovered !== true) c.offset = m.offset;
          if (m.recovered === false) self.emit("recovery-failed", { source: "channel:" + m.channel });
          c.epoch = m.epoch;
        }
        self.settle(m);
        self.emit("subscribed", m);
        break;
      case "error":
        if (!self.settle(m)) self.emit("error", m);
        break;
      default:
        self.settle(m);
        self.emit(m.type, m);
    }
  };

  SwitchboardPush.prototype.settle = function (m) {
    var entry = m.id && this.pending[m.id];
    if (!entry) return false;
    delete this.pending[m.id];
    if (m.type === "error") entry.reject(Object.assign(new Error(m.message), { code: m.code }));
    else entry.resolve(m);
    return true;
  };

  SwitchboardPush.prototype.request = function (message) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (!self.ws || self.state !== "connected") { reject(new Error("not connected")); return; }
      message.id = String(self.nextId++);
      self.pending[message.id] = { resolve: resolve, reject: reject };
      self.ws.send(JSON.stringify(message));
    });
  };

  SwitchboardPush.prototype.sendSubscribe = function (name) {
    var ch = this.channels[name];
    var message = { type: "subscribe", channel: name };
    if (ch && ch.offset !== undefined && ch.epoch) { message.offset = ch.offset; message.epoch = ch.epoch; }
    return this.request(message);
  };

  SwitchboardPush.prototype.subscribe = function (name) {
    if (!this.channels[name]) this.channels[name] = {};
    if (this.state === "connected") return this.sendSubscribe(name);
    return Promise.resolve({ type: "subscribed", channel: name, queued: true });
  };

  SwitchboardPush.prototype.unsubscribe = function (name) {
    delete this.channels[name];
    if (this.state !== "connected") return Promise.resolve({ type: "unsubscribed", channel: name });
    return this.request({ type: "unsubscribe", channel: name });
  };

  SwitchboardPush.prototype.publish = function (topic, data) {
    return this.request({ type: "publish", topic: topic, data: data === undefined ? null : data });
  };

  SwitchboardPush.prototype.presence = function (query) {
    var message = { type: "presence" };
    if (query && query.channel) message.channel = query.channel;
    if (query && query.users) message.users = query.users;
    return this.request(message);
  };

  SwitchboardPush.prototype.scheduleRefresh = function (expires) {
    var self = this;
    clearTimeout(self.refreshTimer);
    if (!self.getToken || !expires) return;
    var inMs = Math.max(1000, (expires * 1000 - Date.now()) - 30000);
    self.refreshTimer = setTimeout(function () {
      Promise.resolve(self.getToken()).then(function (token) {
        self.token = token;
        return self.request({ type: "refresh", token: token });
      }).then(function (m) { self.scheduleRefresh(m.expires); }, function (e) {
        self.emit("error", { code: "refresh", message: String(e && e.message || e) });
      });
    }, inMs);
  };

  SwitchboardPush.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000, "client closed");
  };

  root.SwitchboardPush = SwitchboardPush;
})(typeof globalThis !== "undefined" ? globalThis : this);
