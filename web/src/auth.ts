/**
 * The user's token: a JWT that arrives in the URL fragment (`#token=<jwt>`, as run.sh
 * prints it) or is pasted into the login form, kept in localStorage and sent as
 * `authorization: Bearer <jwt>` on every call. The page reads the token's subject to show
 * who is signed in; only the edge verifies it.
 */

const TOKEN_KEY = "atelier.token";

export interface Session {
  token: string;
  /** The JWT `sub`: the user id the edge will see. */
  user: string;
  /** The JWT `exp`, if any. */
  expiresAt?: Date;
}

/** Takes a token out of the URL fragment, if there is one, and keeps it. */
export function adoptTokenFromUrl(): void {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token === null) return;
  fragment.delete("token");
  const rest = fragment.toString();
  // The token must not stay in the address bar, the history or a bookmark.
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  localStorage.setItem(TOKEN_KEY, token.trim());
}

/** The stored session, or undefined when there is no usable token. */
export function currentSession(): Session | undefined {
  const token = localStorage.getItem(TOKEN_KEY);
  if (token === null) return undefined;
  try {
    return parseToken(token);
  } catch {
    return undefined;
  }
}

/** Checks that a pasted token is a JWT with a subject, and keeps it. */
export function logIn(token: string): Session {
  const session = parseToken(token.trim());
  localStorage.setItem(TOKEN_KEY, session.token);
  return session;
}

export function logOut(): void {
  localStorage.removeItem(TOKEN_KEY);
}

/** Decodes (without verifying) the claims the page shows. */
export function parseToken(token: string): Session {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === undefined) {
    throw new Error("This is not a JWT: it should have three dot-separated parts.");
  }
  let claims: { sub?: unknown; exp?: unknown };
  try {
    claims = JSON.parse(base64UrlDecode(parts[1])) as typeof claims;
  } catch {
    throw new Error("This JWT's payload is not readable JSON.");
  }
  if (typeof claims.sub !== "string" || claims.sub === "") {
    throw new Error("This JWT has no subject (sub).");
  }
  const session: Session = { token, user: claims.sub };
  if (typeof claims.exp === "number") session.expiresAt = new Date(claims.exp * 1000);
  return session;
}

function base64UrlDecode(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), "="));
  return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
}
