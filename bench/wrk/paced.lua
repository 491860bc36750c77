-- The single event of event.lua, with a pause before each request (row f of bench/ingest.py,
-- the lower request rate). wrk 4 has no fixed-rate mode (that is wrk2); its delay() hook holds
-- each connection WRK_DELAY_MS milliseconds before its next request, so with C connections the
-- rate is at most C * 1000 / WRK_DELAY_MS per second. The benchmark picks the delay to land near
-- half of the full-load rate and reports the rate it actually measured.
local now = os.time()
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "1")

wrk.method = "POST"
wrk.path = "/api/events"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
  '{"event_type":"page_view","ts":%d,"params":{"user_id":123,"path":"/pricing",' ..
  '"referrer":"https://example.com","plan":"pro","ab":["a","b"]}}',
  now)

function delay()
  return pause
end
