"""Lists a facilitator's discovery catalog with the official x402 Python bazaar client and prints
what it read as JSON. (Its bazaar client makes synchronous requests: it wraps the synchronous
facilitator client.)

Usage: bazaar_list.py FACILITATOR_URL [QUERY]
Lists `type=http` resources (list_resources); with QUERY, also searches (search).
"""

import json
import sys

from x402.extensions.bazaar import (
    ListDiscoveryResourcesParams,
    SearchDiscoveryResourcesParams,
    with_bazaar,
)
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync


def main(url: str, query: str | None) -> int:
    client = with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=url)))
    listed = client.extensions.bazaar.list_resources(ListDiscoveryResourcesParams(type="http", limit=100))
    outcome = {
        "x402Version": listed.x402_version,
        "total": listed.pagination.total,
        "limit": listed.pagination.limit,
        "items": [item.to_dict() for item in listed.items],
    }
    if query:
        found = client.extensions.bazaar.search(SearchDiscoveryResourcesParams(query=query, type="http"))
        outcome["found"] = [item.resource for item in found.resources]
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
