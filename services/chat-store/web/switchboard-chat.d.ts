// Type declarations of the Switchboard chat widget (/widget/switchboard-chat.js).
// The script defines window.SwitchboardChat and window.SwitchboardPush (ws-push's client).

/** A message as the chat-store API returns it (proto3 JSON of switchboard.chat.v1.ChatMessage). */
export interface ChatMessage {
  id: string;
  clientId?: string;
  from: string;
  to: string;
  /** Exactly as sent: render as text, never as HTML. */
  text?: string;
  attachment?: { id: string; contentType?: string; size?: string; width?: number; height?: number; url: string; thumbnailUrl?: string };
  createdAt?: string;
  editedAt?: string;
  deletedAt?: string;
  deliveredAt?: string;
  readAt?: string;
}

export interface InitOptions {
  /** chat-store's base URL; default: the origin the script came from. */
  server?: string;
  /** The user's JWT (sub, exp). */
  token?: string;
  /** Returns a fresh token; called on 401 and before ws-push's token expires. */
  getToken?: () => string | Promise<string>;
  /** ws-push's WebSocket URL; default: pushUrl from GET /api/v1/me; "" turns live updates off. */
  push?: string;
  /** Open the panel after start (default false). */
  open?: boolean;
  /** "en", "ru" or "pl"; default: the browser's languages. */
  lang?: string;
  /** Where the widget goes; default document.body. */
  container?: HTMLElement;
  success?: (chat: SwitchboardChatApi) => void;
  error?: (error: Error & { status?: number; reason?: string }) => void;
}

export type LiveState = "connecting" | "connected" | "offline" | "off" | "signedOut";

export interface ChatEvents {
  message: { message: ChatMessage; peer: string };
  unread: { total: number; peer: string | null; count?: number };
  state: { state: LiveState };
  open: Record<string, never>;
  close: Record<string, never>;
}

export interface SwitchboardChatApi {
  /** Strings per language; add one before init to support another language. */
  strings: Record<string, Record<string, string>>;
  init(options: InitOptions): Promise<SwitchboardChatApi>;
  /** Unread messages in all dialogs. */
  countNewMessagesSum(): number;
  /** Unread messages from one user (among the loaded dialogs). */
  countNewMessages(user: string | number): number;
  /** Opens the panel, or the dialog with `user`. */
  openDialog(user?: string | number): Promise<void>;
  close(): void;
  on<K extends keyof ChatEvents>(event: K, handler: (payload: ChatEvents[K]) => void): SwitchboardChatApi;
  off<K extends keyof ChatEvents>(event: K, handler: (payload: ChatEvents[K]) => void): SwitchboardChatApi;
  setMuted(muted: boolean): void;
  isMuted(): boolean;
  /** The signed-in user's id, once init has succeeded. */
  user(): string | null;
  /** Beeps due while not muted. */
  soundsPlayed(): number;
  state(): LiveState;
  destroy(): void;
}

declare global {
  interface Window {
    SwitchboardChat: SwitchboardChatApi;
  }
}
