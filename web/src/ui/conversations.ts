/** The sidebar: the user's conversations, most recently active first. */
import type { Conversation } from "../gen/atelier/v1/resources_pb";
import { h } from "./dom";

export interface ConversationListActions {
  create(): void;
  select(conversationId: string): void;
  more(): void;
}

export class ConversationList {
  private readonly list = h("ul", { class: "conversations" });
  private readonly moreButton: HTMLButtonElement;
  readonly element: HTMLElement;

  constructor(actions: ConversationListActions) {
    this.moreButton = h(
      "button",
      { id: "more-conversations", type: "button", hidden: true, on: { click: () => actions.more() } },
      "More",
    );
    this.list.addEventListener("click", (event) => {
      const item = (event.target as Element).closest<HTMLElement>("[data-conversation-id]");
      const id = item?.dataset["conversationId"];
      if (id !== undefined) actions.select(id);
    });
    this.element = h(
      "aside",
      { class: "sidebar" },
      h(
        "button",
        { id: "new-conversation", class: "primary", type: "button", on: { click: () => actions.create() } },
        "New conversation",
      ),
      this.list,
      this.moreButton,
    );
  }

  render(conversations: readonly Conversation[], selectedId: string | undefined, hasMore: boolean): void {
    this.list.replaceChildren(
      ...conversations.map((c) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              class: "conversation",
              type: "button",
              data: { conversationId: c.id },
              "aria-current": c.id === selectedId ? "true" : undefined,
            },
            h("span", { class: "title" }, c.title || "Untitled"),
            h(
              "span",
              { class: "detail" },
              `${c.messageCount} message${c.messageCount === 1 ? "" : "s"}`,
              c.lastActivityAt ? ` · ${when(c.lastActivityAt.seconds)}` : "",
            ),
          ),
        ),
      ),
    );
    this.moreButton.hidden = !hasMore;
  }
}

function when(seconds: bigint): string {
  const date = new Date(Number(seconds) * 1000);
  return date.toDateString() === new Date().toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString();
}
