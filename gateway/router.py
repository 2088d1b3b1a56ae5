"""Finds the binding for an HTTP method and path: most specific template first.

Bindings are grouped by HTTP method and ordered by `PathTemplate.specificity` (literal
segments before variables, left to right; a custom verb before none), so the first match
is the most specific one: `/v1/visits:watch` wins over `/v1/visits/{visit_id}` and
`/v1/appointments/{id}/cancel` never reaches a `{name=**}` catch-all. Two bindings that
would accept exactly the same paths under one method are a contract error at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.descriptors import ApiError, HttpBinding


@dataclass(frozen=True)
class RouteMatch:
    binding: HttpBinding
    params: dict[str, str]


class Router:
    """Immutable after construction; `match` is a scan over one method's sorted bindings."""

    def __init__(self, bindings: Iterable[HttpBinding]) -> None:
        by_method: dict[str, list[HttpBinding]] = {}
        for binding in bindings:
            by_method.setdefault(binding.http_method, []).append(binding)
        for method, group in by_method.items():
            group.sort(key=lambda b: b.template.specificity)
            _refuse_duplicates(method, group)
        self._by_method = {method: tuple(group) for method, group in by_method.items()}

    def match(self, http_method: str, raw_path: str) -> RouteMatch | None:
        for binding in self._by_method.get(http_method, ()):
            params = binding.template.match(raw_path)
            if params is not None:
                return RouteMatch(binding, params)
        return None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """Methods that have a binding for `raw_path` (for 405 and its `Allow` header)."""
        return sorted(
            method
            for method, group in self._by_method.items()
            if any(binding.template.match(raw_path) is not None for binding in group)
        )


def _refuse_duplicates(method: str, group: list[HttpBinding]) -> None:
    seen: dict[tuple[object, ...], HttpBinding] = {}
    for binding in group:
        template = binding.template
        shape = (tuple(template.segments), template.verb)
        other = seen.get(shape)
        if other is not None:
            raise ApiError(
                f"{method} {template.source} is bound to both {other.grpc_path} "
                f"and {binding.grpc_path}"
            )
        seen[shape] = binding
