"""A contract for import-linter that the built-in ones cannot state: "these modules import none
of those when they are imported". The command line and the settings modules must not import
torch, torchvision or OpenCV at import time (`rcnn --help` stays instant), yet the commands
import the stages, and with them torch, inside the functions that run them. This contract
follows only the imports that run when a module is imported: those in the module's body
(including its top-level ``if``/``try`` blocks), not those inside functions or classes, nor
under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections import deque

from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules


@functools.cache
def _module_level_lines(module: str) -> frozenset[int]:
    """The line numbers of the import statements that run when ``module`` is imported."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return frozenset()
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    lines: set[int] = set()

    def visit(body) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                lines.add(node.lineno)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (
                    node.body,
                    node.orelse,
                    node.finalbody,
                    *(h.body for h in node.handlers),
                ):
                    visit(part)

    visit(tree.body)
    return frozenset(lines)


def _at_import(graph, importer: str, imported: str) -> bool:
    details = graph.get_import_details(importer=importer, imported=imported)
    return any(d["line_number"] in _module_level_lines(importer) for d in details)


class ImportTimeForbiddenContract(Contract):
    """``source_modules`` (and their descendants) must not import ``forbidden_modules`` when
    they are imported, directly or through the modules they import then."""

    type_name = "import_time_forbidden"

    source_modules = fields.ListField(subfield=fields.ModuleExpressionField())
    forbidden_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        sources = {m.name for m in module_expressions_to_modules(graph, self.source_modules)}
        for source in list(sources):
            sources |= graph.find_descendants(source)
        forbidden = {m.name for m in self.forbidden_modules}
        chains = []
        for source in sorted(sources):
            chain = self._chain(graph, source, forbidden)
            if chain:
                chains.append(chain)
        return ContractCheck(kept=not chains, metadata={"chains": chains})

    @staticmethod
    def _chain(graph, source: str, forbidden: set[str]) -> list[str] | None:
        """The first chain of import-time imports from ``source`` to a forbidden module."""
        parent = {source: None}
        queue = deque([source])
        while queue:
            module = queue.popleft()
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                if imported in parent or not _at_import(graph, module, imported):
                    continue
                parent[imported] = module
                if imported.split(".")[0] in forbidden:
                    chain = [imported]
                    while parent[chain[-1]] is not None:
                        chain.append(parent[chain[-1]])
                    return chain[::-1]
                queue.append(imported)
        return None

    def render_broken_contract(self, check: ContractCheck) -> None:
        from importlinter.application import output

        for chain in check.metadata["chains"]:
            output.print_error(" -> ".join(chain) + " (at import time)", bold=False)
