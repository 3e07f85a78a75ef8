/** A small element builder: the page's only DOM helper. */

type Child = Node | string | null | undefined | false;
type AttrValue = string | number | boolean | null | undefined;

export type Attrs = {
  class?: string;
  /** `data-*` attributes, camelCase keys as in `element.dataset`. */
  data?: Record<string, string>;
  /** Event listeners by event name, e.g. `{ click: () => ... }`. */
  on?: { [K in keyof HTMLElementEventMap]?: (event: HTMLElementEventMap[K]) => void };
} & { [attribute: string]: AttrValue | Record<string, unknown> | undefined };

/**
 * `h("button", { class: "primary", on: { click } }, "Send")`. Attributes that are
 * false, null or undefined are left out; true sets an empty attribute.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "data") {
      Object.assign(element.dataset, value);
    } else if (name === "on") {
      for (const [event, listener] of Object.entries(value as Record<string, EventListener>)) {
        element.addEventListener(event, listener);
      }
    } else if (name === "class") {
      element.className = value as string;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else if (value !== false && value !== null && value !== undefined) {
      element.setAttribute(name, String(value));
    }
  }
  element.append(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
  return element;
}

/** Sets an element's text only when it changed (keeps selections and avoids reflows). */
export function setText(element: Element, text: string): void {
  if (element.textContent !== text) element.textContent = text;
}
