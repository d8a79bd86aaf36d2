"""ADML: MAML trained on clean and adversarial examples in both loops.

Yin, Tang, Xu, Zhang, Jin & Zhang (2018). Adversarial Meta-Learning. arXiv:1806.03316 (Algorithm 1).

Per task, two adaptations start from the shared initialisation ``theta``:

    theta_clean = theta - inner_lr     * grad L(theta; support)           (clean support)
    theta_adv   = theta - adv_inner_lr * grad L(theta; support_adv)       (support attacked against theta)

and the meta-update scores each against the *other* kind of query set:

    L_meta = 1/2 * [ L(theta_clean; query_adv) + L(theta_adv; query) ]     (query_adv attacked against theta_clean)

so the initialisation learns to adapt from clean data to stay right on attacked data, and from attacked data
to stay right on clean data. The paper takes the two outer terms as two successive updates with their own step
sizes; here they are averaged into one step (one outer learning rate), which with ``epsilon = 0`` makes ADML
exactly MAML (tested). Attacks (FGSM, the paper's, or PGD) are computed with the weights they are scored
against, and their perturbations are constants: no meta-gradient flows through the attacker's gradient.

At test time ADML adapts like MAML on the (clean) support set; ``fewshot eval RUN --attack pgd`` then scores it
under attack (:mod:`fewshot.attacks`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import AdaptsByGradient, Params, call, check_range, setting
from fewshot.algorithms.maml import SPEC as MAML_SPEC
from fewshot.algorithms.maml import MAMLSettings, inner_loop
from fewshot.attacks import KINDS, Attack
from fewshot.tasks.episodes import Split, Task


@dataclass(frozen=True)
class ADML(AdaptsByGradient):
    """Adversarial Meta-Learning (Yin et al. 2018): MAML whose two loops see clean and attacked examples.

    Args:
        inner_lr: clean inner step size (alpha_1 in the paper).
        adv_inner_lr: adversarial inner step size (alpha_2; default ``inner_lr``).
        inner_steps: inner steps for both adaptations.
        first_order: drop second derivatives through the inner loops.
        attack: how support and query sets are attacked in training (FGSM in the paper). PGD starts at the
            clean input in training (no random start: training stays a deterministic function of the task).
        clip: clip each inner gradient to this L2 norm.

    Example:
        >>> adml = ADML(inner_lr=0.4, attack=Attack("fgsm", epsilon=0.2))
        >>> loss, outputs = adml.task_loss(model, parameters_of(model), task)
    """

    inner_lr: float = 0.4
    adv_inner_lr: float | None = None
    inner_steps: int = 1
    first_order: bool = False
    attack: Attack = Attack("fgsm", 0.1)
    clip: float | None = None
    check_finite: bool = True

    def _adapt(self, model: nn.Module, params: Params, support: Split, ways: int, lr: float) -> Params:
        return inner_loop(
            model, params, support, ways, steps=self.inner_steps, lrs=lr, adapted=lambda n: True,
            first_order=self.first_order, clip=self.clip, check_finite=self.check_finite,
        )  # fmt: skip

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        return self._adapt(
            model, params, support, ways, self.inner_lr
        )  # test time: MAML on the clean support

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """``(L_meta, outputs)``: the averaged cross loss above; outputs are ``theta_adv``'s on the clean query."""
        support, query, ways = task.support, task.query, task.ways
        attack = dataclasses.replace(self.attack, random_start=False)

        def support_loss(x: Tensor) -> Tensor:  # the support attack is against the initialisation
            return F.cross_entropy(call(model, params, x), support.y)

        support_adv = Split(attack(support_loss, support.x), support.y)
        clean = self._adapt(model, params, support, ways, self.inner_lr)
        adv = self._adapt(model, params, support_adv, ways, self.adv_inner_lr or self.inner_lr)

        def query_loss(x: Tensor) -> Tensor:  # the query attack is against the clean-adapted weights
            return F.cross_entropy(call(model, clean, x), query.y)

        query_adv = attack(query_loss, query.x)
        robust = F.cross_entropy(call(model, clean, query_adv), query.y)  # clean adaptation, attacked query
        outputs = call(model, adv, query.x)  # attacked adaptation, clean query
        return 0.5 * (robust + F.cross_entropy(outputs, query.y)), outputs


@dataclass(frozen=True)
class ADMLSettings(MAMLSettings):
    attack: str = setting("fgsm", "the attack used in training (fgsm: the paper's; pgd)", choices=KINDS)
    epsilon: float = setting(0.1, "L-infinity radius of the training attack, in pixels of [0, 1]")
    attack_steps: int = setting(5, "PGD steps of the training attack (step size 2.5 * epsilon / steps)")
    adv_inner_lr: float | None = setting(None, "inner step size on the attacked support (default: inner_lr)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, {"epsilon": 0.0, "attack_steps": 1}, ("adv_inner_lr",))


def _build(s: ADMLSettings, testing: bool) -> ADML:
    attack = Attack(s.attack, s.epsilon, s.attack_steps, random_start=False)
    return ADML(s.inner_lr, s.adv_inner_lr, s.steps(testing), s.first_order, attack, clip=s.inner_clip)


SPEC = dataclasses.replace(
    MAML_SPEC, name="adml",
    summary="ADML: MAML trained on clean and adversarial (FGSM / PGD) supports and queries (Yin et al. 2018)",
    build=_build, settings=ADMLSettings, data=("images", "vectors"), routes=("threads", "loop", "autograd"),
)  # fmt: skip
