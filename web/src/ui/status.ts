/** The status area (`#status`): the last error or notice, until dismissed or replaced. */
import { h } from "./dom";

export class StatusBar {
  private readonly text = h("p", { id: "status", role: "status", "aria-live": "polite" });
  readonly element = h(
    "div",
    { class: "status-bar", hidden: true },
    this.text,
    h("button", { class: "small", type: "button", title: "Dismiss", on: { click: () => this.clear() } }, "×"),
  );

  error(message: string): void {
    console.warn(message);
    this.show(message, "error");
  }

  info(message: string): void {
    this.show(message, "info");
  }

  clear(): void {
    this.text.textContent = "";
    this.element.hidden = true;
  }

  private show(message: string, kind: "error" | "info"): void {
    this.text.textContent = message;
    this.element.dataset["kind"] = kind;
    this.element.hidden = false;
  }
}
