"""The hand-written HTTP/1.1 server: a sans-IO parser, a thin asyncio protocol, a router."""
