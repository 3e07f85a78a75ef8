/** What the edge tells the page at start: `GET /config.json` beside index.html. */
export interface Config {
  /** The grpc-web base URL of the edge, e.g. `http://127.0.0.1:50051`. */
  grpcWebUrl: string;
}

export async function loadConfig(): Promise<Config> {
  const url = new URL("config.json", document.baseURI);
  let response: Response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    throw new Error(`Cannot load ${url}: ${String(err)}`);
  }
  if (!response.ok) {
    throw new Error(`Cannot load ${url}: HTTP ${response.status}`);
  }
  const body: unknown = await response.json();
  const grpcWebUrl = (body as Partial<Config> | null)?.grpcWebUrl;
  if (typeof grpcWebUrl !== "string" || grpcWebUrl === "") {
    throw new Error(`${url} has no grpcWebUrl`);
  }
  return { grpcWebUrl: grpcWebUrl.replace(/\/+$/, "") };
}
