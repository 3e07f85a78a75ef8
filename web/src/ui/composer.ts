/** The prompt form: prompt, model, image count and an optional size. */
import type { Model } from "../gen/atelier/v1/resources_pb";
import { h } from "./dom";

export interface Draft {
  prompt: string;
  model: string;
  imageCount: number;
  width?: number;
  height?: number;
  /**
   * SendMessage's idempotency key: the same while the form is unchanged, so sending again
   * after a failure that may have reached the server is never charged twice.
   */
  requestId: string;
}

export class Composer {
  readonly element: HTMLFormElement;
  private readonly prompt = h("textarea", {
    id: "prompt",
    rows: 3,
    required: true,
    maxlength: 4000,
    placeholder: "A red fox in the snow… then: make it night-time",
  });
  /**
   * Empty sends no model: the server's default for a new picture, and the previous
   * picture's model for an edit of it (so "make it night-time" stays on its model).
   */
  private readonly model = h("input", {
    id: "model",
    list: "model-options",
    value: "",
    placeholder: "as before",
    autocomplete: "off",
    spellcheck: false,
  });
  /** Filled from ListModels. */
  private readonly modelOptions = h("datalist", { id: "model-options" });
  private readonly imageCount = h(
    "select",
    { id: "image-count" },
    ...[1, 2, 3, 4].map((n) => h("option", { value: n }, String(n))),
  );
  private readonly width = sizeInput("width");
  private readonly height = sizeInput("height");
  private readonly send = h("button", { id: "send", class: "primary", type: "submit" }, "Send");
  private requestId = crypto.randomUUID();
  private busy = false;
  private enabled = false;

  constructor(onSend: (draft: Draft) => Promise<boolean>) {
    this.element = h(
      "form",
      {
        class: "composer",
        on: {
          input: () => {
            this.requestId = crypto.randomUUID();
          },
        },
      },
      this.prompt,
      h(
        "div",
        { class: "settings" },
        field("Model", this.model),
        this.modelOptions,
        field("Images", this.imageCount),
        field("Width", this.width),
        field("Height", this.height),
        this.send,
      ),
    );
    this.element.addEventListener("submit", async (event) => {
      event.preventDefault();
      const draft = this.draft();
      if (this.busy || draft === undefined) return;
      this.setBusy(true);
      try {
        if (await onSend(draft)) {
          this.prompt.value = "";
          this.requestId = crypto.randomUUID();
        }
      } finally {
        this.setBusy(false);
        this.prompt.focus();
      }
    });
    // Ctrl+Enter (or Cmd+Enter) sends.
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) this.element.requestSubmit();
    });
    this.setEnabled(false);
  }

  /** Offers the server's models, each with the price of one image at its default size. */
  setModels(models: readonly Model[]): void {
    this.modelOptions.replaceChildren(
      ...models.map((model) => {
        const size = `${model.defaultWidth}×${model.defaultHeight}`;
        const label = `${model.isDefault ? "default · " : ""}${size} · ${model.defaultImagePrice} credits`;
        return h("option", { value: model.name, label });
      }),
    );
    const fallback = models.find((model) => model.isDefault)?.name;
    if (fallback !== undefined) this.model.placeholder = `as before, or ${fallback}`;
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.update();
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.update();
  }

  private update(): void {
    this.send.disabled = !this.enabled || this.busy;
    this.prompt.disabled = !this.enabled;
  }

  private draft(): Draft | undefined {
    const prompt = this.prompt.value.trim();
    if (prompt === "") return undefined;
    const draft: Draft = {
      prompt,
      model: this.model.value.trim(),
      imageCount: Number(this.imageCount.value),
      requestId: this.requestId,
    };
    if (this.width.value !== "") draft.width = this.width.valueAsNumber;
    if (this.height.value !== "") draft.height = this.height.valueAsNumber;
    return draft;
  }
}

function sizeInput(id: string): HTMLInputElement {
  return h("input", { id, type: "number", min: 64, max: 4096, step: 8, placeholder: "auto" });
}

function field(label: string, control: HTMLElement): HTMLElement {
  return h("label", { class: "field" }, h("span", {}, label), control);
}
