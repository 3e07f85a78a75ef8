// The page, end to end, in headless Chromium against a running Atelier backend.
//
// Environment:
//   ATELIER_WEB_URL         the page URL, with `#token=<jwt>` (required)
//   ATELIER_EXPECT_WIDTH    the width in pixels the image must have (required), e.g. 512
//   ATELIER_MODEL           the model to pick (default: builtin)
//   ATELIER_SCREENSHOT      where to save a PNG of the page at the end (optional)
//   ATELIER_PROGRESS_STAGE  the live progress to see before the reload (default: rendering,
//                           above 0 %); "any" accepts any stage, for a renderer (builtin)
//                           that finishes before the page could see it draw
//   CHROMIUM                the browser binary (default: /usr/bin/chromium)
//
// It sends one prompt, reloads the page while the image is being made, and checks that the
// message completes, its image loads at the expected width, and its timeline shows every
// step exactly once. On success it prints one line of JSON to stdout:
//   {"messageId": "...", "cursors": [...], "kinds": [...], "naturalWidth": 512}
// On failure it exits non-zero, with the reason, the page's errors and #status on stderr.
// Browser console messages go to stderr as they happen.

import { chromium } from "playwright-core";

const REQUIRED_KINDS = [
  "messageCreated",
  "generationStarted",
  "intentResolved",
  "generationProgress",
  "generationCompleted",
];

const url = requireEnv("ATELIER_WEB_URL");
const expectedWidth = Number(requireEnv("ATELIER_EXPECT_WIDTH"));
const model = process.env.ATELIER_MODEL || "builtin";
const screenshot = process.env.ATELIER_SCREENSHOT || "";
const progressStage = process.env.ATELIER_PROGRESS_STAGE || "rendering";
if (!Number.isInteger(expectedWidth) || expectedWidth <= 0) {
  fail(`ATELIER_EXPECT_WIDTH must be a positive whole number, not ${process.env.ATELIER_EXPECT_WIDTH}`);
}

const pageErrors = [];
let step = "launching Chromium";
let browser;
let page;

try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  // A new context is a fresh profile: empty localStorage, no cache.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on("console", (message) => {
    const text = `[console.${message.type()}] ${message.text()}`;
    process.stderr.write(`${text}\n`);
    if (message.type() === "error") pageErrors.push(text);
  });
  page.on("pageerror", (error) => {
    const text = `[pageerror] ${error.stack || error.message}`;
    process.stderr.write(`${text}\n`);
    pageErrors.push(text);
  });
  page.on("requestfailed", (request) => {
    // The event stream is cut on reload: that one is expected.
    if (!request.url().endsWith("/WatchEvents")) {
      process.stderr.write(`[requestfailed] ${request.url()}: ${request.failure()?.errorText}\n`);
    }
  });

  step = "opening the page";
  await page.goto(url);
  await waitLive();

  step = "creating a conversation";
  const before = await page.evaluate(
    () => document.querySelector('.conversation[aria-current="true"]')?.dataset.conversationId ?? null,
  );
  await page.click("#new-conversation");
  await page.waitForFunction(
    (previous) => {
      const current = document.querySelector('.conversation[aria-current="true"]');
      const prompt = document.querySelector("#prompt");
      return current && current.dataset.conversationId !== previous && prompt && !prompt.disabled;
    },
    before,
    { timeout: 15_000 },
  );

  step = "waiting for the model list (ListModels)";
  await page.waitForFunction(
    (wanted) => Array.from(document.querySelectorAll("#model-options option")).some((o) => o.value === wanted),
    model,
    { timeout: 15_000 },
  );

  step = "sending a prompt";
  const prompt = `a red fox in the snow (browser test ${Date.now()})`;
  await page.fill("#prompt", prompt);
  if ((await page.$eval("#model", (el) => el.tagName)) === "SELECT") {
    await page.selectOption("#model", model);
  } else {
    await page.fill("#model", model);
  }
  await page.selectOption("#image-count", "1");
  await page.click("#send");
  const messageId = await page.waitForFunction(
    (text) => {
      for (const el of document.querySelectorAll("[data-message-id]")) {
        if (el.querySelector(".prompt")?.textContent === text) return el.dataset.messageId;
      }
      return false;
    },
    prompt,
    { timeout: 15_000 },
  ).then((handle) => handle.jsonValue());
  const message = `[data-message-id="${messageId}"]`;

  step = `waiting for live progress (${progressStage}) of message ${messageId}`;
  await page.waitForFunction(
    ([selector, stage]) => {
      const card = document.querySelector(selector);
      if (!card) return false;
      const entries = Array.from(card.querySelectorAll('.timeline li[data-kind="generationProgress"]'));
      if (stage === "any") return entries.length > 0;
      if (entries.some((li) => li.dataset.stage === stage && Number(li.dataset.percent) > 0)) return true;
      return Array.from(card.querySelectorAll("progress[data-generation-id]")).some((p) => p.value > 0);
    },
    [message, progressStage],
    { timeout: 30_000 },
  );

  step = "reloading the page";
  await page.reload();
  await waitLive();

  step = `waiting for message ${messageId} to complete after the reload`;
  await page.waitForSelector(`${message}[data-status="MESSAGE_STATUS_COMPLETED"]`, {
    state: "attached",
    timeout: 60_000,
  });

  step = "waiting for the image to load";
  const image = `${message} img[data-generation-id]`;
  await page.waitForFunction(
    (selector) => {
      const img = document.querySelector(selector);
      return img !== null && img.complete && img.naturalWidth > 0;
    },
    image,
    { timeout: 30_000 },
  );
  const naturalWidth = await page.$eval(image, (img) => img.naturalWidth);
  if (naturalWidth !== expectedWidth) {
    throw new Error(`the image is ${naturalWidth} pixels wide, expected ${expectedWidth}`);
  }

  step = "checking the timeline";
  const entries = await page.$$eval(`${message} .timeline li[data-cursor][data-kind]`, (items) =>
    items.map((li) => ({ cursor: li.dataset.cursor, kind: li.dataset.kind })),
  );
  const cursors = entries.map((e) => Number(e.cursor));
  const kinds = entries.map((e) => e.kind);
  const duplicates = cursors.filter((c, i) => cursors.indexOf(c) !== i);
  if (duplicates.length > 0) {
    throw new Error(`the timeline shows cursors more than once: ${duplicates.join(", ")} (all: ${cursors.join(", ")})`);
  }
  if (cursors.some((c, i) => i > 0 && c <= cursors[i - 1])) {
    throw new Error(`the timeline is not in cursor order: ${cursors.join(", ")}`);
  }
  const missing = REQUIRED_KINDS.filter((kind) => !kinds.includes(kind));
  if (missing.length > 0) {
    throw new Error(`the timeline lacks ${missing.join(", ")} (it has: ${kinds.join(", ")})`);
  }

  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ messageId, cursors, kinds, naturalWidth }));
  await browser.close();
} catch (err) {
  process.stderr.write(`browser test failed while ${step}: ${err?.message ?? err}\n`);
  if (page) {
    const status = await page.textContent("#status", { timeout: 1_000 }).catch(() => null);
    process.stderr.write(`#status: ${status ? JSON.stringify(status) : "(empty)"}\n`);
    const connection = await page.textContent("#connection", { timeout: 1_000 }).catch(() => null);
    process.stderr.write(`#connection: ${connection ?? "(absent)"}\n`);
    process.stderr.write(`page errors (${pageErrors.length}):\n${pageErrors.map((e) => `  ${e}`).join("\n")}\n`);
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}

async function waitLive() {
  await page.waitForFunction(() => document.querySelector("#connection")?.textContent === "live", null, {
    timeout: 30_000,
  });
}

function requireEnv(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

function fail(message) {
  process.stderr.write(`browser test: ${message}\n`);
  process.exit(2);
}
