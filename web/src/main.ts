/** Boot: load /config.json, then show the login screen or the app. */
import { createApi } from "./api";
import { adoptTokenFromUrl, currentSession, logIn, logOut, type Session } from "./auth";
import { App } from "./app";
import { loadConfig, type Config } from "./config";
import { loginScreen } from "./ui/login";
import { StatusBar } from "./ui/status";

const root = document.getElementById("root")!;
const status = new StatusBar();
document.body.prepend(status.element);

function showLogin(config: Config): void {
  root.replaceChildren(
    loginScreen((token) => {
      try {
        showApp(config, logIn(token));
      } catch (err) {
        status.error(err instanceof Error ? err.message : String(err));
      }
    }),
  );
  document.getElementById("login-token")?.focus();
}

function showApp(config: Config, session: Session): void {
  status.clear();
  const api = createApi(config.grpcWebUrl, () => session.token);
  const app = new App(api, session, status, () => {
    logOut();
    showLogin(config);
  });
  root.replaceChildren(app.element);
  void app.start();
}

async function boot(): Promise<void> {
  adoptTokenFromUrl();
  let config: Config;
  try {
    config = await loadConfig();
  } catch (err) {
    status.error(err instanceof Error ? err.message : String(err));
    return;
  }
  const session = currentSession();
  if (session === undefined) showLogin(config);
  else showApp(config, session);
}

void boot();
