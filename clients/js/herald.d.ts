// SPDX-License-Identifier: MIT
// Types for herald.js, the browser client served by heraldd at /v1/herald.js.

/** An event as the server sends it (PROTOCOL.md section 2). */
export interface HeraldEvent<T = unknown> {
  type: "event";
  topic: string;
  /** Opaque, ordered cursor: pass it back as `since`. */
  id: string;
  /** Milliseconds since the Unix epoch, when the server accepted the event. */
  time: number;
  event: string;
  data: T;
}

/** The subscribe ok frame. `next` is where the live part begins. */
export interface SubscribeOk {
  type: "ok";
  id: number;
  topic: string;
  replayed: number;
  gap: boolean;
  next?: string;
}

export interface GapInfo {
  /** The subscription's pattern. */
  topic: string;
  /** Events before this id may be missing. */
  next?: string;
  /** "resume": the cursor was older than history; "server": a gap frame. */
  reason: "resume" | "server";
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateDetail {
  session?: string;
  server?: string;
  /** WebSocket close code and reason of the connection that ended. */
  code?: number;
  reason?: string;
  delayMs?: number;
  attempt?: number;
  error?: string;
}

export interface HeraldOptions {
  /** Sent as `?token=`; browsers cannot set headers on a WebSocket. */
  token?: string;
  /** First reconnect delay before jitter, ms (default 250). */
  minBackoffMs?: number;
  /** Longest reconnect delay, ms (default 15000). */
  maxBackoffMs?: number;
  onStateChange?: (state: ConnectionState, detail: StateDetail) => void;
  /** Errors thrown by callbacks and server errors not tied to a call (default: console.error). */
  onError?: (err: Error) => void;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: typeof WebSocket;
}

export interface SubscribeOptions {
  /** "all", "latest" or an event id; absent: live events only. */
  since?: string;
  onGap?: (gap: GapInfo, sub: Subscription) => void;
  /** Called once when the subscription ends: null after unsubscribe()/close(), else why. */
  onEnd?: (err: HeraldError | null, sub: Subscription) => void;
}

export interface PublishOptions {
  /** Event kind, default "message". */
  event?: string;
  /** Idempotency key, 1-128 visible ASCII bytes; generated when absent. */
  key?: string;
}

export interface PublishResult {
  id: string;
  receivers: number;
  /** True when the server had already seen this key and answered as the first time. */
  duplicate: boolean;
  key: string;
}

export class HeraldError extends Error {
  constructor(code: string, message?: string);
  /** The protocol's error code: forbidden, invalid_topic, too_large, rate_limited, ... */
  readonly code: string;
}

export class Subscription {
  readonly pattern: string;
  readonly active: boolean;
  readonly ended: boolean;
  /** The id of the last event delivered. */
  readonly lastId: string | undefined;
  /** Resolves with the first subscribe ok; rejects with a HeraldError when refused. */
  readonly ready: Promise<SubscribeOk>;
  unsubscribe(): Promise<void>;
}

export interface StateChangeEvent extends Event {
  readonly state: ConnectionState;
  readonly detail: StateDetail;
}

export class Herald extends EventTarget {
  constructor(url?: string, options?: HeraldOptions);
  readonly state: ConnectionState;
  /** The current connection's welcome frame, or null. */
  readonly welcome: { session: string; server: string; heartbeat: number; max_event_bytes: number } | null;
  subscribe<T = unknown>(
    pattern: string,
    options: SubscribeOptions,
    onEvent: (event: HeraldEvent<T>, sub: Subscription) => void,
  ): Subscription;
  subscribe<T = unknown>(pattern: string, onEvent: (event: HeraldEvent<T>, sub: Subscription) => void): Subscription;
  publish(topic: string, data: unknown, options?: PublishOptions): Promise<PublishResult>;
  close(): void;
  addEventListener(type: "statechange", listener: (ev: StateChangeEvent) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export const STATES: readonly ConnectionState[];
export function topicMatches(pattern: string, topic: string): boolean;
export function isPattern(s: string): boolean;
export default Herald;
