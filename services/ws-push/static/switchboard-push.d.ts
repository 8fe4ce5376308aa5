// Types of switchboard-push.js (served at /client.d.ts). Protocol: docs/ws-push.md.

export interface Push<T = unknown> {
  type: string;
  data?: T;
  id?: string;
}

/** A delivery: `source` is "user", "all" or "channel:<name>". */
export interface PushMessage<T = unknown> {
  type: "push";
  source: string;
  offset: number;
  epoch: string;
  push: Push<T>;
}

export interface Connected {
  type: "connected";
  client: string;
  node: string;
  user: string;
  admin: boolean;
  epoch: string;
  offset: number;
  expires: number;
  recovered?: boolean;
}

export interface Subscribed {
  type: "subscribed";
  id?: string;
  channel: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
}

export interface PresenceUser {
  user: string;
  connections: number;
  admin: boolean;
}

export interface PresenceAnswer {
  type: "presence";
  id?: string;
  channel?: string;
  users: PresenceUser[];
}

export interface ClientError {
  code: string | number;
  message: string;
  channel?: string;
}

export interface StateChange {
  state: "connecting" | "connected" | "disconnected";
  detail?: Connected | { code: number; reason: string };
}

export interface Options {
  /** A token to start with. */
  token?: string;
  /** Returns a fresh token: before expiry and after close code 4003. */
  getToken?: () => string | Promise<string>;
  /** Backoff bounds in ms (full jitter). */
  minDelay?: number;
  maxDelay?: number;
}

export interface EventMap {
  state: StateChange;
  connected: Connected;
  push: PushMessage;
  subscribed: Subscribed;
  "recovery-failed": { source: string };
  error: ClientError;
}

export declare class SwitchboardPush {
  constructor(url: string, options?: Options);
  readonly state: StateChange["state"];
  on<K extends keyof EventMap>(event: K, handler: (payload: EventMap[K]) => void): this;
  /** `push:<type>` events carry the pushes of one type. */
  on(event: `push:${string}`, handler: (payload: PushMessage) => void): this;
  connect(): this;
  subscribe(channel: string): Promise<Subscribed>;
  unsubscribe(channel: string): Promise<{ type: "unsubscribed"; channel: string }>;
  publish(topic: string, data?: unknown): Promise<{ type: "published"; id?: string }>;
  presence(query: { channel?: string; users?: string[] }): Promise<PresenceAnswer>;
  close(): void;
}

export default SwitchboardPush;
