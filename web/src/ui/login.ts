/** The login screen: paste a development token (a JWT), as printed by run.sh. */
import { h } from "./dom";

export function loginScreen(logIn: (token: string) => void): HTMLElement {
  const token = h("textarea", {
    id: "login-token",
    rows: 5,
    placeholder: "eyJhbGciOiJIUzI1NiJ9…",
    spellcheck: false,
    autocomplete: "off",
  });
  const submit = (event: Event) => {
    event.preventDefault();
    logIn(token.value);
  };
  return h(
    "main",
    { class: "login" },
    h(
      "form",
      { class: "card", on: { submit } },
      h("h1", {}, "Atelier"),
      h(
        "p",
        {},
        "Paste a development token, or open the link that ",
        h("code", {}, "deploy/local/run.sh"),
        " prints. Mint one with ",
        h("code", {}, "atelier-mint-token --sub alice"),
        ".",
      ),
      h("label", { for: "login-token" }, "Token"),
      token,
      h("button", { id: "login-button", class: "primary", type: "submit" }, "Log in"),
    ),
  );
}
