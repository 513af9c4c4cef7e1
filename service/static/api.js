// HTTP calls to the service: the API key kept in sessionStorage, JSON error bodies as ApiError,
// and crops fetched with the key. Every request goes to the origin that served the page.

const API_KEY_STORAGE = "axm.apiKey";

export class ApiError extends Error {
  constructor(status, code, detail, body) {
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
  }
}

export function readApiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE) || "";
}

export function storeApiKey(key) {
  if (key) {
    sessionStorage.setItem(API_KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(API_KEY_STORAGE);
  }
}

// Send a request with the API key. Resolves to the Response, or rejects with an ApiError that
// carries the server's `error` code and `detail`.
export async function request(path, { method = "GET", json, form } = {}) {
  const headers = {};
  const key = readApiKey();
  if (key) {
    headers["X-API-Key"] = key;
  }

  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }

  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "omit" });
  } catch (error) {
    throw new ApiError(0, "network", `request to ${path} failed: ${error.message}`, null);
  }
  if (!response.ok) {
    throw await readApiError(response);
  }
  return response;
}

export async function requestJson(path, options) {
  const response = await request(path, options);
  return response.json();
}

async function readApiError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // A proxy or a crash may return HTML or an empty body, and the status alone still explains it.
  }
  const code = body && typeof body.error === "string" ? body.error : `http_${response.status}`;
  const detail = body ? formatDetail(body.detail) : response.statusText;
  return new ApiError(response.status, code, detail, body);
}

// FastAPI's own validation errors send `detail` as a list of {loc, msg}, while the service sends a string.
function formatDetail(detail) {
  if (typeof detail === "string") {
    return detail;
  }
  if (Array.isArray(detail)) {
    return detail
      .map((item) => (item && item.msg ? `${(item.loc || []).join(".")}: ${item.msg}` : String(item)))
      .join("; ");
  }
  return detail === undefined || detail === null ? "" : JSON.stringify(detail);
}

// Gallery ids may contain "/", so each segment is encoded and the separators are kept.
export function imagePath(id) {
  return `/gallery/${id.split("/").map(encodeURIComponent).join("/")}/image`;
}

// Use the server's image_url only when it is a path on this origin, so the key never leaves it.
export function imageUrlOf(result) {
  const url = result.image_url;
  if (typeof url === "string" && url.startsWith("/") && !url.startsWith("//")) {
    return url;
  }
  return imagePath(result.id);
}

// Crops are fetched with the API key header (an <img src> cannot send it) and shown as blob URLs.
export async function loadCrop(img, url) {
  try {
    const response = await request(url);
    const objectUrl = URL.createObjectURL(await response.blob());
    img.src = objectUrl;
    return objectUrl;
  } catch (error) {
    img.alt = `${img.alt} (image not loaded: ${error.detail || error.message})`;
    img.classList.add("missing");
    return null;
  }
}

// Record a blob URL for later release, or release it now when its image left the page while loading.
export function keepObjectUrl(img, url, liveUrls) {
  if (!url) {
    return;
  }
  if (img.isConnected) {
    liveUrls.push(url);
  } else {
    URL.revokeObjectURL(url);
  }
}
