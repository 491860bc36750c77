-- One realistic event per request (rows a, b, c, e, f, g of bench/ingest.py).
--
-- The request is static: wrk builds it once and replays it on every connection, which keeps the
-- load generator (one thread on its own core) far from being the bottleneck. `ts` is the time
-- the script is loaded, well inside the collector's accepted skew for any run length.
local now = os.time()

wrk.method = "POST"
wrk.path = "/api/events"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
  '{"event_type":"page_view","ts":%d,"params":{"user_id":123,"path":"/pricing",' ..
  '"referrer":"https://example.com","plan":"pro","ab":["a","b"]}}',
  now)
