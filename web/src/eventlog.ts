/**
 * What the page remembers of the event stream, per user, in one localStorage entry:
 * the cursor of the last event handled, the balance as of that cursor, and each message's
 * timeline (one entry per event received about it).
 *
 * All three are written together, after each event is handled, so the stored record is
 * always a consistent snapshot "as of cursor N". On reload the page shows the stored
 * timelines and balance, then resumes the stream after N: every later event arrives once,
 * and nothing before N arrives again. Two tabs of the same user each write their own
 * consistent snapshot; whichever wrote last wins, and a reload then replays what that
 * tab had not yet seen (entries are deduplicated by cursor).
 */

export interface TimelineEntry {
  /** The event's cursor (a uint64, as decimal text). */
  cursor: string;
  /** The Event.payload case, e.g. "generationProgress". */
  kind: string;
  /** A short description for people, e.g. "rendering 40%". */
  text: string;
  /** Extra `data-*` attributes for the list item, e.g. { stage: "rendering", percent: "40" }. */
  data?: Record<string, string>;
}

interface StoredLog {
  version: 1;
  cursor?: string;
  balance?: string;
  timelines: Record<string, TimelineEntry[]>;
}

/** Timelines of at most this many messages are kept (the most recently started ones). */
const MAX_MESSAGES = 200;

export class EventLog {
  /** The cursor of the last event handled; undefined before the first one. */
  cursor: bigint | undefined;
  /** The balance as of `cursor`; undefined until GetBalance has answered once. */
  balance: bigint | undefined;
  private readonly timelines = new Map<string, TimelineEntry[]>();

  private constructor(private readonly key: string) {}

  static load(user: string): EventLog {
    const log = new EventLog(`atelier.events.${user}`);
    const raw = localStorage.getItem(log.key);
    if (raw === null) return log;
    try {
      const stored = JSON.parse(raw) as StoredLog;
      if (stored.version !== 1) return log;
      if (stored.cursor !== undefined) log.cursor = BigInt(stored.cursor);
      if (stored.balance !== undefined) log.balance = BigInt(stored.balance);
      for (const [messageId, entries] of Object.entries(stored.timelines)) {
        log.timelines.set(messageId, entries);
      }
    } catch (err) {
      console.warn("ignoring an unreadable event log", err);
    }
    return log;
  }

  /** True for an event that was handled already (its cursor is not after ours). */
  seen(cursor: bigint): boolean {
    return this.cursor !== undefined && cursor <= this.cursor;
  }

  timeline(messageId: string): readonly TimelineEntry[] {
    return this.timelines.get(messageId) ?? [];
  }

  /** Adds an entry to a message's timeline (in memory: `save` writes it). */
  append(messageId: string, entry: TimelineEntry): void {
    const entries = this.timelines.get(messageId);
    if (entries === undefined) {
      this.timelines.set(messageId, [entry]);
    } else if (!entries.some((e) => e.cursor === entry.cursor)) {
      entries.push(entry);
    }
  }

  /** Writes cursor, balance and timelines in one localStorage write. */
  save(): void {
    while (this.timelines.size > MAX_MESSAGES) this.dropOldest();
    for (;;) {
      try {
        localStorage.setItem(this.key, JSON.stringify(this.toStored()));
        return;
      } catch (err) {
        // Over the storage quota: forget the oldest timelines and try again.
        if (this.timelines.size === 0) {
          console.warn("cannot store the event log", err);
          return;
        }
        for (let n = Math.ceil(this.timelines.size / 2); n > 0; n--) this.dropOldest();
      }
    }
  }

  private dropOldest(): void {
    const oldest = this.timelines.keys().next();
    if (!oldest.done) this.timelines.delete(oldest.value);
  }

  private toStored(): StoredLog {
    const stored: StoredLog = { version: 1, timelines: Object.fromEntries(this.timelines) };
    if (this.cursor !== undefined) stored.cursor = this.cursor.toString();
    if (this.balance !== undefined) stored.balance = this.balance.toString();
    return stored;
  }
}
