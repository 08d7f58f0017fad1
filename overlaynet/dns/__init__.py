"""The node's embedded DNS (127.0.0.11 in every container): the table of names
(:mod:`.records`), the decision per query (:mod:`.answers`) and the asyncio resolver
(:mod:`.server`)."""
