/** The selected conversation: its title (renamable), its messages and the prompt form. */
import type { TimelineEntry } from "../eventlog";
import type { Conversation, Model } from "../gen/atelier/v1/resources_pb";
import { ConversationStatus } from "../gen/atelier/v1/resources_pb";
import type { MessageView } from "../model";
import { Composer, type Draft } from "./composer";
import { h, setText } from "./dom";
import { MessageCard, type MessageActions } from "./message";

export interface PaneActions extends MessageActions {
  rename(conversationId: string, title: string): Promise<boolean>;
  older(): void;
  send(draft: Draft): Promise<boolean>;
}

export class ConversationPane {
  readonly element: HTMLElement;
  private readonly title = h("h2", { id: "conversation-title" });
  private readonly renameButton: HTMLButtonElement;
  private readonly renameForm: HTMLFormElement;
  private readonly renameInput = h("input", { id: "rename-title", maxlength: 200, required: true });
  private readonly olderButton: HTMLButtonElement;
  private readonly messages = h("div", { class: "messages" });
  private readonly empty = h("p", { class: "empty" });
  private readonly composer: Composer;
  private readonly cards = new Map<string, MessageCard>();
  private conversation: Conversation | undefined;

  constructor(private readonly actions: PaneActions) {
    this.renameButton = h(
      "button",
      { id: "rename", class: "small", type: "button", on: { click: () => this.startRename() } },
      "Rename",
    );
    this.renameForm = h(
      "form",
      { class: "rename", hidden: true },
      this.renameInput,
      h("button", { class: "small primary", type: "submit" }, "Save"),
      h("button", { class: "small", type: "button", on: { click: () => this.endRename() } }, "Cancel"),
    );
    this.renameForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const id = this.conversation?.id;
      if (id !== undefined && (await actions.rename(id, this.renameInput.value))) this.endRename();
    });
    this.olderButton = h(
      "button",
      { id: "older-messages", class: "small", type: "button", hidden: true, on: { click: () => actions.older() } },
      "Older messages",
    );
    this.composer = new Composer((draft) => actions.send(draft));
    this.element = h(
      "main",
      { class: "pane" },
      h("header", { class: "pane-header" }, this.title, this.renameButton, this.renameForm),
      h("div", { class: "scroller" }, this.olderButton, this.messages, this.empty),
      this.composer.element,
    );
    this.show(undefined);
  }

  /** Shows a conversation (or none), with no messages yet. */
  show(conversation: Conversation | undefined): void {
    this.conversation = conversation;
    this.cards.clear();
    this.messages.replaceChildren();
    this.endRename();
    this.setOlder(false);
    this.updateConversation(conversation);
  }

  /** Shows the conversation's new title or status. */
  updateConversation(conversation: Conversation | undefined): void {
    if (conversation !== undefined && conversation.id !== this.conversation?.id) return;
    this.conversation = conversation;
    setText(this.title, conversation ? conversation.title || "Untitled" : "No conversation");
    this.renameButton.hidden = conversation === undefined;
    const archived = conversation?.status === ConversationStatus.ARCHIVED;
    this.composer.setEnabled(conversation !== undefined && !archived);
    this.updateEmpty();
  }

  /** The models the composer offers (ListModels). */
  setModels(models: readonly Model[]): void {
    this.composer.setModels(models);
  }

  setOlder(hasMore: boolean): void {
    this.olderButton.hidden = !hasMore;
  }

  /** Shows a message, new or changed, in creation order (oldest at the top). */
  upsert(view: MessageView, timeline: readonly TimelineEntry[]): void {
    const id = view.message.id;
    let card = this.cards.get(id);
    if (card === undefined) {
      card = new MessageCard(view, this.actions);
      this.cards.set(id, card);
      // Message ids are UUIDv7: their text order is their creation order.
      const next = Array.from(this.cards.keys())
        .filter((other) => other > id)
        .sort()[0];
      this.messages.insertBefore(card.element, next === undefined ? null : this.cards.get(next)!.element);
      this.updateEmpty();
    } else {
      card.update(view);
    }
    card.addTimeline(timeline);
  }

  addTimeline(messageId: string, entries: readonly TimelineEntry[]): void {
    this.cards.get(messageId)?.addTimeline(entries);
  }

  /** Scrolls to the newest message. */
  scrollToEnd(): void {
    this.messages.lastElementChild?.scrollIntoView({ block: "end" });
  }

  private updateEmpty(): void {
    setText(
      this.empty,
      this.conversation === undefined
        ? "Pick a conversation on the left, or start a new one."
        : "No messages yet: describe a picture below.",
    );
    this.empty.hidden = this.cards.size > 0;
  }

  private startRename(): void {
    if (this.conversation === undefined) return;
    this.renameInput.value = this.conversation.title;
    this.title.hidden = true;
    this.renameButton.hidden = true;
    this.renameForm.hidden = false;
    this.renameInput.select();
  }

  private endRename(): void {
    this.renameForm.hidden = true;
    this.title.hidden = false;
    this.renameButton.hidden = this.conversation === undefined;
  }
}
