"""From headers and bytes to verified events: the request checks every
webhook passes, the sources file, one signature scheme per provider (the
generic X-Signature scheme included), and the per-(tenant, source) rate
limit. Nothing here needs the app or the database."""
