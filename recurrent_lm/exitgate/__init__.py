"""Training the learned exit gate (Ouro's stage II) on a frozen, exported model: ``exitgate=stage2``.

    recurrent-lm-train exitgate=stage2 model=pretrained init_from=runs/<name>/export [task=parity]

Stage I, the gate trained with the LM on the entropy-regularised expected loss, is an option of pretraining
(``trainer.exit_loss_beta``, :mod:`recurrent_lm.exitgate.stage1`). The gate itself (architecture, storage) is
:mod:`recurrent_lm.model.exit_gate`; the criterion that uses it is ``exit=learned``
(:class:`recurrent_lm.loop.criteria.LearnedExit`).
"""

from recurrent_lm.exitgate.config import ExitGateConfig
from recurrent_lm.exitgate.objective import exit_depth, stage2_loss, stage2_targets

__all__ = ["ExitGateConfig", "exit_depth", "stage2_loss", "stage2_targets"]
