"""The registered keys of a key-based client, parsed once per version.

``private_key_jwt`` (RFC 7523 §2.2) and ``self_signed_tls_client_auth``
(RFC 8705 §2.2) clients register their keys inline (``jwks``) or by
reference (``jwks_uri``, fetched under the rules of
:mod:`~swim_as.clientauth.jwks_fetch`). A parsed key set is kept as long
as the document it came from is the one in use: a changed client (a new
``Client`` object from the directory) or a new fetch parses again.
"""

from __future__ import annotations

from collections import OrderedDict

from swim_as.clientauth.jwk import ClientKeySet, JwkError, parse_client_jwks
from swim_as.clientauth.jwks_fetch import DestinationRefused, FetchFailed, JwksFetcher
from swim_as.clients.model import Client

MAX_PARSED = 10_000


class KeysUnavailable(Exception):
    """The client's keys cannot be used; the message is for the log."""


class ClientKeys:
    """Key sets of clients, from ``jwks`` or ``jwks_uri``."""

    def __init__(self, fetcher: JwksFetcher) -> None:
        self._fetcher = fetcher
        # client_id or jwks_uri -> (the document parsed, its key set)
        self._parsed: OrderedDict[tuple[str, bool], tuple[object, ClientKeySet]] = (
            OrderedDict()
        )

    async def of(
        self, client: Client, *, require_x5c: bool, refresh: bool = False
    ) -> ClientKeySet:
        """The client's usable keys.

        ``refresh`` refetches a ``jwks_uri`` (an unknown ``kid``), at most
        once per retry interval of the fetcher.

        Raises:
            KeysUnavailable: no keys registered, the fetch failed or was
                refused, or the document breaks the JWK rules.
        """
        inline = client.metadata.get("jwks")
        uri = client.metadata.get("jwks_uri")
        if inline is not None:
            return self._parse(("jwks:" + client.client_id, require_x5c), inline)
        if not isinstance(uri, str):
            raise KeysUnavailable(f"{client.client_id!r} registered no keys")
        try:
            document = await self._fetcher.get(uri, refresh=refresh)
        except (FetchFailed, DestinationRefused) as err:
            raise KeysUnavailable(f"jwks_uri of {client.client_id!r}: {err}") from err
        return self._parse(("uri:" + uri, require_x5c), document)

    def _parse(self, key: tuple[str, bool], document: object) -> ClientKeySet:
        cached = self._parsed.get(key)
        # Identity, not equality: the same document object means the same
        # version; holding it keeps its id from being reused.
        if cached is not None and cached[0] is document:
            self._parsed.move_to_end(key)
            return cached[1]
        try:
            keys = parse_client_jwks(document, require_x5c=key[1])
        except JwkError as err:
            raise KeysUnavailable(f"{key[0][:200]!r}: {err}") from err
        self._parsed[key] = (document, keys)
        if len(self._parsed) > MAX_PARSED:
            self._parsed.popitem(last=False)
        return keys
