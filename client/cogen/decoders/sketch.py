"""The ``sketch`` variant: the cloud writes an outline from the bare instruction, the device writes the
answer from its private context, the instruction and that outline (CoGenesis's sketch collaboration).

Only the instruction goes to the cloud (one ``Sketch`` call per row, all rows at once); the answer is
decoded by the device alone. A cloud that fails twice leaves the row without an outline (a warning,
``fell_back``), never without an answer.
"""

from __future__ import annotations

import logging

from fedcogen.client.cogen.cloud_client import CloudUnavailable
from fedcogen.client.cogen.decoders.base import Decoder
from fedcogen.client.cogen.decoders.per_token import PerTokenDecoder
from fedcogen.client.cogen.lockstep_rows import Row, in_parallel

log = logging.getLogger(__name__)


class SketchDecoder(Decoder):
    """Fetch every row's outline (concurrently), then decode the device prompts that include it."""

    def run(self) -> None:
        in_parallel(self._outline, self.rows)
        for row in self.rows:
            row.prompt = self.device.device_ids(row.instruction, row.context, row.run.sketch)
        PerTokenDecoder(self.device, self.rows, use_cloud=False, use_device=True).run()

    def _outline(self, row: Row) -> None:
        for attempt in (1, 2):
            try:
                reply = row.client.sketch(row.instruction, self.cfg.sketch_max_new_tokens, self.cfg.sketch_timeout_s)
                row.run.sketch = reply.sketch
                row.run.calls += 1
                return
            except CloudUnavailable as exc:
                if attempt == 1:
                    log.warning("sketch call failed (%s); reconnecting once", exc)
                    row.client.connect()
                    continue
                row.run.fall_back(f"cloud unavailable for the sketch ({exc}); writing without an outline")
