"""`GenerateConfig`: the runs a cascade is built from and how it samples, bound in gin
(configs/generate/*.gin name the runs of the CPU experiments and of the main job)."""
from __future__ import annotations

import dataclasses
from typing import Any

import gin

from mufm.sample.cascade import DEFAULT_CONFIGS, MAX_SECONDS, Cascade, CascadeError
from mufm.sample.decode import SamplingConfig

ROLES = ("mulan", "semantic", "coarse", "fine", "codec")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    mulan: str = ""  # run directories, as `python -m mufm.train` wrote them
    semantic: str = ""  # the semantic stage LM
    coarse: str = ""
    fine: str = ""
    codec: str = ""
    semantic_tokenizer: str = ""  # the semantic (w2v-BERT-like) run: continuations only
    semantic_tokens: str = ""  # its k-means; "": <semantic_tokenizer>/semantic_tokens
    overlap: float = 0.5  # of a window carried into the next
    max_seconds: float = MAX_SECONDS  # the longest clip a request may ask for
    semantic_sampling: SamplingConfig = DEFAULT_CONFIGS["semantic"]
    coarse_sampling: SamplingConfig = DEFAULT_CONFIGS["coarse"]
    fine_sampling: SamplingConfig = DEFAULT_CONFIGS["fine"]
    # A MeshConfig (e.g. `GenerateConfig.mesh = @MeshConfig()` with mesh/cpu8.gin): the
    # batch of each window split over its data axis, the weights replicated. None: one device.
    mesh: Any = None

    def missing(self) -> list[str]:
        return [role for role in ROLES if not getattr(self, role)]

    def load(self) -> Cascade:
        """The checked, loaded cascade; CascadeError naming any run that is not set."""
        if self.missing():
            raise CascadeError(f"no run given for {', '.join(self.missing())}: set "
                               f"GenerateConfig.<role> in a configs/generate/*.gin or pass "
                               f"--<role>=RUN_DIR")
        mesh = None
        if self.mesh is not None:
            from mufm.parallel.mesh import build_mesh

            mesh = build_mesh(self.mesh)
        return Cascade.load(*(getattr(self, role) for role in ROLES),
                            semantic_tokenizer=self.semantic_tokenizer or None,
                            semantic_tokens=self.semantic_tokens or None,
                            overlap=self.overlap, max_seconds=self.max_seconds,
                            configs={"semantic": self.semantic_sampling,
                                     "coarse": self.coarse_sampling,
                                     "fine": self.fine_sampling},
                            mesh=mesh)
