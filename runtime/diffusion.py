"""Semi-autoregressive block decoding of a masked-diffusion LM (`specdec.models.diffusion.DiffusionLM`)
with low-confidence remasking, an optional Learn2PD filter and End-of-Text Prediction.

The answer starts as `gen_length` mask tokens after the prompt and is decoded block by block,
left to right (`block_length` positions each). Every step is one full forward of the model over
prompt + answer; within the current block each masked position gets the model's prediction and
its confidence (the probability of that prediction), and a policy picks which masked positions
take their prediction:
- `LowConfidenceRemasking`: the `k` most confident, `k` from an even split of the block over
  `steps_per_block` steps (LLaDA's schedule); with a Learn2PD filter also every position the filter
  calls final (sigmoid of its logit above the threshold), so blocks finish in fewer steps.
- `OracleReplay` (Learn2PD's training data): exactly the positions whose prediction equals a
  reference decode's token; the step's confidences and those labels go to a recorder.
End-of-Text Prediction (`eotp=True`): once an end-of-text token is decoded, every masked position
after it becomes end-of-text too, so the blocks after the answer cost nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from specdec.models.base import DraftMismatchError
from specdec.models.diffusion import DiffusionLM


@dataclass
class BlockSchedule:
    """How an answer is decoded."""

    gen_length: int = 128
    """Answer positions (mask tokens) after the prompt."""
    block_length: int = 32
    """Positions per block, decoded left to right (Learn2PD and LLaDA: 32)."""
    steps_per_block: int = 32
    """Denoising steps a block gets at most; the block's masks are split evenly over them."""
    temperature: float = 0.0
    """0: each position's prediction is its argmax; above 0, Gumbel-perturbed logits at this temperature (LLaDA's sampler)."""

    def __post_init__(self):
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} must be a multiple of block_length={self.block_length}")
        if not 1 <= self.steps_per_block <= self.block_length:
            raise ValueError(f"steps_per_block={self.steps_per_block} must be within [1, block_length={self.block_length}]")


@dataclass
class StepView:
    """What a policy sees at one step, over the current block's positions."""

    block: int
    """Index of the block being decoded."""
    step: int
    """Steps already taken in this block."""
    predictions: torch.Tensor
    """[L] the model's token for every position of the block."""
    confidences: torch.Tensor
    """[L] the probability of each prediction; 1.0 at positions already decoded."""
    masked: torch.Tensor
    """[L] bool: positions still masked."""


@dataclass
class DiffusionResult:
    """One decoded answer and what it cost."""

    tokens: list[int]
    """The answer, up to (without) its first end-of-text token."""
    positions: list[int] = field(default_factory=list)
    """Every answer position's final token (gen_length of them, end-of-text padding included)."""
    forwards: int = 0
    """Model forwards (one per denoising step)."""
    filter_unmasked: int = 0
    """Positions unmasked because the filter called them final (beyond the schedule's picks)."""
    eotp_filled: int = 0
    """Masked positions End-of-Text Prediction filled without a step."""
    total_s: float = 0.0
    """Wall time of the decode."""
    steps_by_block: list[int] = field(default_factory=list)
    """Denoising steps each block took (0: filled by End-of-Text Prediction)."""

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)


Policy = Callable[[StepView], torch.Tensor]
"""A step's choice: StepView -> [L] bool, the masked positions that take their prediction (at least one)."""


def transfer_counts(masked: int, steps: int) -> list[int]:
    """Positions unmasked at each of `steps` steps when `masked` positions are split evenly (the first steps take the remainder)."""
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def serving_threshold(filter_model, override: float | None = None) -> float | None:
    """The filter probability above which a masked position is unmasked early: `override` when given,
    else the threshold saved with the filter (Learn2PDConfig.threshold); None without a filter."""
    if filter_model is None:
        return None
    return override if override is not None else filter_model.config.threshold


class LowConfidenceRemasking:
    """The schedule's most confident masked positions, plus those a Learn2PD filter accepts
    (above `threshold`; unset: the filter's own, see serving_threshold)."""

    def __init__(self, schedule: BlockSchedule, filter_model=None, threshold: float | None = None):
        self.counts = transfer_counts(schedule.block_length, schedule.steps_per_block)
        self.filter_model, self.threshold = filter_model, serving_threshold(filter_model, threshold)
        self.filter_unmasked = 0

    def __call__(self, view: StepView) -> torch.Tensor:
        # Step 1: the k most confident masked positions (k from the even split; at least one).
        k = min(max(self.counts[min(view.step, len(self.counts) - 1)], 1), int(view.masked.sum()))
        scores = view.confidences.masked_fill(~view.masked, -1.0)
        chosen = torch.zeros_like(view.masked)
        chosen[scores.topk(k).indices] = True
        if self.filter_model is None:
            return chosen
        # Step 2: plus every masked position the filter calls final.
        extra = (self.filter_model.p_final(view.confidences[None].float())[0] > self.threshold) & view.masked & ~chosen
        self.filter_unmasked += int(extra.sum())
        return chosen | extra


class OracleReplay:
    """Learn2PD's oracle ("extremely greedy parallel"): at every step, unmask exactly the masked positions
    whose prediction already equals the reference decode's token (none: the most confident one, written
    with the reference's token), and record the step's confidences with those labels."""

    def __init__(self, reference: list[int], block_length: int):
        self.reference, self.block_length = torch.tensor(reference), block_length
        self.confidences: list[torch.Tensor] = []
        """Per step [L] the block's confidences (1.0 where decoded)."""
        self.labels: list[torch.Tensor] = []
        """Per step [L] 1.0 where a masked position's prediction equals the reference token."""
        self.masked: list[torch.Tensor] = []
        """Per step [L] bool: positions still masked (only they carry a label)."""

    def _reference(self, view: StepView) -> torch.Tensor:
        lo = view.block * self.block_length
        return self.reference[lo:lo + self.block_length].to(view.predictions.device)

    def __call__(self, view: StepView) -> torch.Tensor:
        correct = (view.predictions == self._reference(view)) & view.masked
        self.confidences.append(view.confidences.float().cpu())
        self.labels.append(correct.float().cpu())
        self.masked.append(view.masked.cpu())
        if bool(correct.any()):
            return correct
        chosen = torch.zeros_like(view.masked)
        chosen[int(view.confidences.masked_fill(~view.masked, -1.0).argmax())] = True
        return chosen

    def write(self, view: StepView, chosen: torch.Tensor) -> torch.Tensor:
        """The reference's tokens (equal to the predictions wherever those were correct)."""
        return self._reference(view)


def block_decode(
    lm: DiffusionLM, prompt_ids: torch.Tensor, schedule: BlockSchedule, policy: Policy, eos_token_ids: set[int], eotp: bool = False, seed: int = 0,
    write: Callable[[StepView, torch.Tensor], torch.Tensor] | None = None, on_block: Callable[[list[int]], None] | None = None,
) -> DiffusionResult:
    """Decode one answer after `prompt_ids` [T] (steps in the module docstring). `write(view, chosen)`
    gives the tokens the chosen positions take (default: their predictions; the oracle writes the reference's);
    `on_block(answer so far)` is called after every block (the answer up to its first end-of-text, for streaming)."""
    start, device = time.perf_counter(), lm.device
    mask_id, eos = lm.config.mask_token_id, sorted(eos_token_ids)
    prompt_len, length = prompt_ids.numel(), schedule.block_length
    x = torch.cat([prompt_ids.to(device).long(), torch.full((schedule.gen_length,), mask_id, device=device)])
    result = DiffusionResult(tokens=[])
    generator = torch.Generator(device=device).manual_seed(seed)
    for block in range(schedule.gen_length // length):
        lo, hi = prompt_len + block * length, prompt_len + (block + 1) * length
        step = 0
        while bool((x[lo:hi] == mask_id).any()):
            # Step 1: one forward over the whole sequence; the block's predictions and confidences (never the mask token itself).
            with torch.no_grad():
                logits = lm(x[None])[0, lo:hi].float()
            logits[:, mask_id] = float("-inf")
            result.forwards += 1
            predictions, confidences = predict(logits, schedule.temperature, generator)
            masked = x[lo:hi] == mask_id
            view = StepView(block, step, predictions, confidences.masked_fill(~masked, 1.0), masked)
            # Step 2: the policy's positions take their tokens.
            chosen = policy(view) & masked
            if not bool(chosen.any()):
                raise RuntimeError("the unmasking policy chose no masked position: a step must decode at least one")
            tokens = write(view, chosen) if write is not None else predictions
            block_x = x[lo:hi]
            block_x[chosen] = tokens[chosen]
            step += 1
            # Step 3: End-of-Text Prediction: everything masked after a decoded end-of-text is end-of-text.
            if eotp and eos:
                result.eotp_filled += fill_after_eos(x, prompt_len, mask_id, eos[0], set(eos))
        result.steps_by_block.append(step)
        if on_block is not None:
            on_block(cut_at_eos(x[prompt_len:hi].tolist(), eos_token_ids))
    result.filter_unmasked = getattr(policy, "filter_unmasked", 0)
    answer = x[prompt_len:].tolist()
    result.tokens, result.positions = cut_at_eos(answer, eos_token_ids), answer
    result.total_s = time.perf_counter() - start
    return result


def check_filter(filter_model, schedule: BlockSchedule) -> None:
    """A filter trained on blocks of another length cannot read this schedule's: a DraftMismatchError that says which to use."""
    if filter_model is not None and filter_model.config.block_length != schedule.block_length:
        raise DraftMismatchError(f"the filter reads blocks of {filter_model.config.block_length} positions, the schedule has block_length={schedule.block_length}: pass block_length={filter_model.config.block_length}")


def cut_at_eos(tokens: list[int], eos_token_ids: set[int]) -> list[int]:
    """`tokens` up to (without) the first end-of-text token."""
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos_token_ids), len(tokens))]


def end_of_text_ids(tokenizer) -> set[int]:
    """The tokenizer's end-of-text tokens: its eos token and ChatML's <|im_end|> where its vocabulary has one
    (never the unknown token a missing name converts to)."""
    vocab = tokenizer.get_vocab()
    return {t for t in (tokenizer.eos_token_id, vocab.get("<|im_end|>")) if isinstance(t, int) and t >= 0}


def predict(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """([L] predicted tokens, [L] their probabilities) from [L, V] logits: argmax, or Gumbel-max at `temperature`."""
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_min(1e-20)
        predictions = (logits / temperature - torch.log(-torch.log(uniform))).argmax(-1)
    else:
        predictions = logits.argmax(-1)
    return predictions, probs.gather(1, predictions[:, None])[:, 0]


def fill_after_eos(x: torch.Tensor, prompt_len: int, mask_id: int, eos_id: int, eos_ids: set[int]) -> int:
    """Set every masked answer position after the first decoded end-of-text token to `eos_id`; returns how many were filled."""
    answer = x[prompt_len:]
    is_eos = torch.zeros_like(answer, dtype=torch.bool)
    for token in eos_ids:
        is_eos |= answer == token
    if not bool(is_eos.any()):
        return 0
    first = int(is_eos.nonzero()[0])
    tail = answer[first + 1:]
    fill = tail == mask_id
    tail[fill] = eos_id
    return int(fill.sum())


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of positions, over the longer of the two answers, where `tokens` equals `reference` (1.0: identical)."""
    longest = max(len(tokens), len(reference))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / longest
