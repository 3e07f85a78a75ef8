/**
 * The signed-in page: conversations on the left, the selected one on the right, and the
 * user's one event stream keeping everything current.
 */
import { Code } from "@connectrpc/connect";

import type { Api } from "./api";
import type { Session } from "./auth";
import { timelineEntry } from "./describe";
import { describeError, isCode } from "./errors";
import { EventLog } from "./eventlog";
import { EventStream, type ConnectionState } from "./events";
import type { WatchEventsResponse } from "./gen/atelier/v1/chat_service_pb";
import type { Event } from "./gen/atelier/v1/events_pb";
import type { Conversation, Message } from "./gen/atelier/v1/resources_pb";
import { applyEvent, mergeMessage, newView, type MessageView } from "./model";
import type { Draft } from "./ui/composer";
import { ConversationList } from "./ui/conversations";
import { h, setText } from "./ui/dom";
import { ConversationPane } from "./ui/pane";
import type { StatusBar } from "./ui/status";

/** Don't ask for fresh image URLs of one message more often than this. */
const REFRESH_INTERVAL_MS = 30_000;

export class App {
  readonly element: HTMLElement;
  private readonly log: EventLog;
  private readonly stream: EventStream;
  private readonly sidebar: ConversationList;
  private readonly pane: ConversationPane;
  private readonly balance = h("span", { id: "balance" }, "…");
  private readonly connection = h("span", { id: "connection", class: "connection" }, "offline");

  private conversations: Conversation[] = [];
  private conversationsPage = "";
  private selectedId: string | undefined;
  /** The messages of the selected conversation. */
  private readonly views = new Map<string, MessageView>();
  private olderPage = "";
  /** When each message was last fetched for fresh image URLs. */
  private readonly refreshed = new Map<string, number>();
  /** Messages being fetched because an event named them, with the events since. */
  private readonly unlisted = new Map<string, Event[]>();
  /** False until the first load succeeded: the stream going live retries it. */
  private loaded = false;

  constructor(
    private readonly api: Api,
    private readonly session: Session,
    private readonly status: StatusBar,
    private readonly logOut: () => void,
  ) {
    this.log = EventLog.load(session.user);
    this.stream = new EventStream({
      api,
      cursor: () => this.log.cursor,
      onEvent: (response) => this.handleEvent(response),
      onState: (state) => this.showConnection(state),
    });
    this.sidebar = new ConversationList({
      create: () => void this.createConversation(),
      select: (id) => void this.select(id),
      more: () => void this.loadConversations(false),
    });
    this.pane = new ConversationPane({
      rename: (id, title) => this.rename(id, title),
      older: () => void this.loadMessages(this.olderPage),
      send: (draft) => this.send(draft),
      cancel: (id) => void this.cancel(id),
      setFavorite: (id, favorite) => void this.setFavorite(id, favorite),
      refresh: (id) => this.refreshMessage(id),
    });
    this.element = h(
      "div",
      { class: "app" },
      h(
        "header",
        { class: "topbar" },
        h("h1", {}, "Atelier"),
        h("span", { class: "user", title: "The token's subject" }, session.user),
        h("span", { class: "credits" }, "Credits ", this.balance),
        this.connection,
        h("button", { id: "logout", class: "small", type: "button", on: { click: () => this.stop() } }, "Log out"),
      ),
      this.sidebar.element,
      this.pane.element,
    );
    this.showBalance();
  }

  /** Loads the state, then opens the event stream. */
  async start(): Promise<void> {
    await this.load();
    this.stream.start();
  }

  /**
   * Loads conversations, the selected one's messages and the balance, unless it is known
   * from the event log (stored as of its cursor, so the resumed stream's deltas apply).
   */
  private async load(): Promise<void> {
    const [conversations, balance] = await Promise.all([
      this.loadConversations(true),
      this.log.balance === undefined ? this.loadBalance() : true,
      this.loadModels(),
    ]);
    if (conversations) await this.restoreSelection();
    this.loaded = conversations && balance;
  }

  /** Logs out: closes the stream and forgets the token. */
  private stop(): void {
    this.stream.stop();
    this.logOut();
  }

  // ---- the event stream ------------------------------------------------------------

  private handleEvent(response: WatchEventsResponse): void {
    const cursor = response.cursor;
    // resync_required is handled whatever its cursor: after it, cursors start again from
    // its own (they may be lower than ours when the server is another deployment).
    const resync = response.event?.payload.case === "resyncRequired";
    if (this.log.seen(cursor) && !resync) return;
    if (response.event !== undefined) {
      try {
        this.apply(cursor, response.event);
      } catch (err) {
        // A bug here must not stop the stream, nor replay the event forever.
        console.error(`cannot apply event ${cursor}`, response.event, err);
      }
    }
    // The cursor, the balance and the timelines, in one write.
    this.log.cursor = cursor;
    this.log.save();
  }

  private apply(cursor: bigint, event: Event): void {
    const payload = event.payload;
    switch (payload.case) {
      case "heartbeat":
        return;
      case "resyncRequired":
        this.status.info("Some events were missed: reloading.");
        void this.resync();
        return;
      case "creditsChanged":
        if (this.log.balance !== undefined) {
          this.log.balance += payload.value.delta;
          this.showBalance();
        }
        break;
      case "titleUpdated":
        this.changeConversation(event.conversationId, (c) => (c.title = payload.value.title));
        break;
      case "messageCreated":
        this.noteActivity(event);
        break;
    }
    if (event.messageId === "") return;
    const entry = timelineEntry(cursor, event);
    this.log.append(event.messageId, entry);

    let view = this.views.get(event.messageId);
    if (view === undefined) {
      if (event.conversationId !== this.selectedId) return;
      if (payload.case !== "messageCreated" || payload.value.message === undefined) {
        void this.fetchUnlisted(event.messageId, event);
        return;
      }
      view = newView(payload.value.message);
      this.views.set(event.messageId, view);
    } else {
      applyEvent(view, event);
    }
    this.pane.upsert(view, [entry]);
    if (payload.case === "messageCreated") this.pane.scrollToEnd();
  }

  /** resync_required: events were lost, so reload everything; the stream carries on. */
  private async resync(): Promise<void> {
    await Promise.all([
      this.loadConversations(true),
      this.loadBalance(),
      this.selectedId === undefined ? undefined : this.loadMessages(""),
    ]);
  }

  private showConnection(state: ConnectionState): void {
    this.connection.dataset["state"] = state.kind;
    switch (state.kind) {
      case "connecting":
        setText(this.connection, "connecting…");
        break;
      case "live":
        setText(this.connection, "live");
        this.connection.title = "";
        // The server is back: load what could not be loaded before.
        if (!this.loaded) void this.load();
        break;
      case "waiting":
        setText(this.connection, `reconnecting in ${seconds(state.retryInMs)} s`);
        this.connection.title = state.reason;
        break;
      case "stopped":
        setText(this.connection, "offline");
        this.status.error(`Event stream stopped: ${state.reason}`);
        break;
    }
  }

  // ---- balance -----------------------------------------------------------------------

  private async loadBalance(): Promise<boolean> {
    const response = await this.call("Loading the balance", this.api.getBalance({}));
    if (response === undefined) return false;
    this.log.balance = response.balance;
    this.log.save();
    this.showBalance();
    return true;
  }

  /** The models the composer offers; without them any name can still be typed. */
  private async loadModels(): Promise<boolean> {
    const response = await this.call("Loading the models", this.api.listModels({}));
    if (response === undefined) return false;
    this.pane.setModels(response.models);
    return true;
  }

  private showBalance(): void {
    setText(this.balance, this.log.balance?.toString() ?? "…");
  }

  // ---- conversations -----------------------------------------------------------------

  private async loadConversations(reset: boolean): Promise<boolean> {
    const response = await this.call(
      "Loading conversations",
      this.api.listConversations({ pageSize: 20, pageToken: reset ? "" : this.conversationsPage }),
    );
    if (response === undefined) return false;
    const fresh = new Map(response.conversations.map((c) => [c.id, c]));
    this.conversations = reset
      ? response.conversations
      : [...this.conversations.filter((c) => !fresh.has(c.id)), ...response.conversations];
    this.conversationsPage = response.nextPageToken;
    this.renderConversations();
    const selected = this.conversations.find((c) => c.id === this.selectedId);
    if (selected !== undefined) this.pane.updateConversation(selected);
    return true;
  }

  private async createConversation(): Promise<void> {
    const response = await this.call("Creating a conversation", this.api.createConversation({}));
    const conversation = response?.conversation;
    if (conversation === undefined) return;
    this.conversations = [conversation, ...this.conversations.filter((c) => c.id !== conversation.id)];
    await this.select(conversation.id);
  }

  private async rename(conversationId: string, title: string): Promise<boolean> {
    const response = await this.call(
      "Renaming",
      this.api.renameConversation({ conversationId, title }),
    );
    if (response?.conversation === undefined) return false;
    this.replaceConversation(response.conversation);
    return true;
  }

  private async select(conversationId: string): Promise<void> {
    const conversation = this.conversations.find((c) => c.id === conversationId);
    if (conversation === undefined) return;
    this.selectedId = conversationId;
    localStorage.setItem(this.selectionKey(), conversationId);
    this.views.clear();
    this.pane.show(conversation);
    this.renderConversations();
    await this.loadMessages("");
    this.pane.scrollToEnd();
  }

  /** Reopens the conversation selected before the reload, or the most recent one. */
  private async restoreSelection(): Promise<void> {
    const stored = localStorage.getItem(this.selectionKey());
    if (stored !== null && !this.conversations.some((c) => c.id === stored)) {
      try {
        const { conversation } = await this.api.getConversation({ conversationId: stored });
        if (conversation !== undefined) this.conversations.push(conversation);
      } catch (err) {
        if (!isCode(err, Code.NotFound)) this.status.error(`Loading a conversation: ${describeError(err)}`);
      }
    }
    const id = this.conversations.some((c) => c.id === stored) ? stored : this.conversations[0]?.id;
    if (id != null) await this.select(id);
  }

  private selectionKey(): string {
    return `atelier.selected.${this.session.user}`;
  }

  private replaceConversation(conversation: Conversation): void {
    this.conversations = this.conversations.map((c) => (c.id === conversation.id ? conversation : c));
    this.renderConversations();
    this.pane.updateConversation(conversation);
  }

  private changeConversation(id: string, change: (c: Conversation) => void): void {
    const conversation = this.conversations.find((c) => c.id === id);
    if (conversation === undefined) return;
    change(conversation);
    this.replaceConversation(conversation);
  }

  /** A new message moves its conversation to the top (fetching it if it is not listed). */
  private noteActivity(event: Event): void {
    const conversation = this.conversations.find((c) => c.id === event.conversationId);
    if (conversation === undefined) {
      void this.call(
        "Loading a conversation",
        this.api.getConversation({ conversationId: event.conversationId }),
      ).then((response) => {
        const fresh = response?.conversation;
        if (fresh === undefined || this.conversations.some((c) => c.id === fresh.id)) return;
        this.conversations.unshift(fresh);
        this.renderConversations();
      });
      return;
    }
    conversation.messageCount += 1;
    if (event.occurredAt !== undefined) conversation.lastActivityAt = event.occurredAt;
    this.conversations = [conversation, ...this.conversations.filter((c) => c !== conversation)];
    this.renderConversations();
  }

  private renderConversations(): void {
    this.sidebar.render(this.conversations, this.selectedId, this.conversationsPage !== "");
  }

  // ---- messages ----------------------------------------------------------------------

  /** Loads a page of the selected conversation's messages ("" for the newest). */
  private async loadMessages(pageToken: string): Promise<void> {
    const conversationId = this.selectedId;
    if (conversationId === undefined) return;
    const response = await this.call(
      "Loading messages",
      this.api.listMessages({ conversationId, pageToken, pageSize: 20 }),
    );
    if (response === undefined || this.selectedId !== conversationId) return;
    for (const message of response.messages) this.showMessage(message);
    this.olderPage = response.nextPageToken;
    this.pane.setOlder(this.olderPage !== "");
  }

  /** Shows a snapshot of a message, merged with what the events told already. */
  private showMessage(message: Message): void {
    if (message.conversationId !== this.selectedId) return;
    let view = this.views.get(message.id);
    if (view === undefined) {
      view = newView(message);
      this.views.set(message.id, view);
    } else {
      mergeMessage(view, message);
    }
    this.pane.upsert(view, this.log.timeline(message.id));
  }

  private async send(draft: Draft): Promise<boolean> {
    const conversationId = this.selectedId;
    if (conversationId === undefined) return false;
    const response = await this.call(
      "Sending",
      this.api.sendMessage({
        conversationId,
        prompt: draft.prompt,
        clientRequestId: draft.requestId,
        settings: {
          model: draft.model,
          imageCount: draft.imageCount,
          width: draft.width,
          height: draft.height,
        },
      }),
    );
    if (response?.message === undefined) return false;
    this.status.clear();
    this.showMessage(response.message);
    this.pane.scrollToEnd();
    return true;
  }

  private async cancel(messageId: string): Promise<void> {
    const response = await this.call(
      "Cancelling",
      this.api.cancelGeneration({ target: { case: "messageId", value: messageId } }),
    );
    if (response?.message !== undefined) this.showMessage(response.message);
  }

  private async setFavorite(generationId: string, favorite: boolean): Promise<void> {
    const response = await this.call(
      "Changing a favourite",
      this.api.setFavorite({ generationId, favorite }),
    );
    const changed = response?.generation;
    const view = changed && this.views.get(changed.messageId);
    const generation = view?.message.generations.find((g) => g.id === generationId);
    if (view === undefined || generation === undefined) return;
    generation.isFavorite = changed!.isFavorite;
    this.pane.upsert(view, []);
  }

  /** Fetches a message again when its image URLs expired, at most every REFRESH_INTERVAL_MS. */
  private async refreshMessage(messageId: string): Promise<void> {
    const last = this.refreshed.get(messageId);
    if (last !== undefined && Date.now() - last < REFRESH_INTERVAL_MS) return;
    this.refreshed.set(messageId, Date.now());
    const response = await this.call("Loading a message", this.api.getMessage({ messageId }));
    if (response?.message !== undefined) this.showMessage(response.message);
  }

  /**
   * An event names a message of the selected conversation that the page has not listed
   * (sent from another tab or browser, or still loading): fetch it, then apply on top the
   * events that arrived meanwhile, since the snapshot may predate them.
   */
  private async fetchUnlisted(messageId: string, event: Event): Promise<void> {
    const waiting = this.unlisted.get(messageId);
    if (waiting !== undefined) {
      waiting.push(event);
      return;
    }
    const events = [event];
    this.unlisted.set(messageId, events);
    const response = await this.call("Loading a message", this.api.getMessage({ messageId }));
    this.unlisted.delete(messageId);
    if (response?.message === undefined) return;
    this.showMessage(response.message);
    const view = this.views.get(messageId);
    if (view === undefined) return;
    for (const e of events) applyEvent(view, e);
    this.pane.upsert(view, []);
  }

  // ---- calls -------------------------------------------------------------------------

  /** Awaits a call; on failure shows why in the status area and returns undefined. */
  private async call<T>(what: string, call: Promise<T>): Promise<T | undefined> {
    try {
      return await call;
    } catch (err) {
      this.status.error(`${what}: ${describeError(err)}`);
      return undefined;
    }
  }
}

function seconds(ms: number): string {
  return ms < 1000 ? (ms / 1000).toFixed(1) : String(Math.round(ms / 1000));
}
