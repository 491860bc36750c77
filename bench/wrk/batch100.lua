-- A batch of 100 events per request (row d of bench/ingest.py): a JSON array, as an SDK that
-- buffers events sends it. The events differ (types, users, paths, times) so that nothing in the
-- server can profit from 100 identical objects. Static request: built once, replayed. With
-- WRK_LAYOUT=ndjson (row h), the same events as NDJSON, one per line.
local now = os.time()
local types = {"page_view", "click", "signup", "add_to_cart", "purchase"}
local paths = {"/", "/pricing", "/docs", "/blog/launch", "/checkout"}
local events = {}
for i = 1, 100 do
  events[i] = string.format(
    '{"event_type":"%s","ts":%d,"params":{"user_id":%d,"path":"%s",' ..
    '"referrer":"https://example.com","plan":"pro","ab":["a","b"],"seq":%d}}',
    types[(i % #types) + 1], now - (100 - i), 1000 + (i * 37) % 500,
    paths[(i % #paths) + 1], i)
end

wrk.method = "POST"
wrk.path = "/api/events"
if os.getenv("WRK_LAYOUT") == "ndjson" then
  -- Row h: the same events as NDJSON, one per line.
  wrk.headers["Content-Type"] = "application/x-ndjson"
  wrk.body = table.concat(events, "\n") .. "\n"
else
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = "[" .. table.concat(events, ",") .. "]"
end
