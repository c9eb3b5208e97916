// The HTTP client: the API key, the error envelope, the server's byte labels and server-sent events.

const KEY = "tinyllm-api-key";

// With TINYLLM_API_KEY set on the server, API calls need the key: ask once, keep it in this browser.
export async function api(url, options = {}) {
  const sentWith = localStorage.getItem(KEY);
  const send = () => {
    const key = localStorage.getItem(KEY);
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    return fetch(url, { ...options, headers });
  };
  let res = await send();
  if (res.status === 401) {
    if (localStorage.getItem(KEY) === sentWith) askForKey();  // unless a request answered earlier already asked
    if (localStorage.getItem(KEY) !== sentWith) res = await send();
  }
  return res;
}

function askForKey() {
  const key = window.prompt("This server needs an API key (TINYLLM_API_KEY):");
  if (key) localStorage.setItem(KEY, key);
}

export function postJson(url, body, signal) {
  return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
                    signal });
}

// The message of the server's error envelope {"error": {"message", "type", "param"}}.
export async function errorMessage(res) {
  try {
    const body = await res.json();
    return body.error?.message || `HTTP ${res.status}`;
  } catch (e) {
    return `HTTP ${res.status}`;
  }
}

export async function getJson(url) {
  const res = await api(url);
  if (!res.ok) throw new Error(await errorMessage(res));
  return res.json();
}

// The bytes of a text, the server's label of each (a character on its first byte, "" on the bytes that
// continue it) and the offset of the character each belongs to: the page never works out characters from
// bytes itself.
export async function tokenize(text, signal) {
  const res = await postJson("/v1/tokenize", { text }, signal);
  if (!res.ok) throw new Error(await errorMessage(res));
  const body = await res.json();
  return { bytes: body.tokens.map((t) => t.id), labels: body.labels, starts: body.tokens.map((t) => t.start) };
}

// Read a text/event-stream body and call onEvent with each event's parsed JSON data, until [DONE].
export async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
}
