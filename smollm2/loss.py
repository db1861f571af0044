"""The fused training loss: linear + cross-entropy chunked over tokens, so the [tokens x 49152] float32 logits
never exist at once.

`linear_cross_entropy` computes the loss and gradients of smollm2_model.cross_entropy (the reference: logits
(B, T, V) in float32, then the mean over targets != -100) from the final hidden states and the head's weight,
chunk by chunk over tokens: each chunk's gradient (softmax - onehot) is formed in the forward, so backward only
scales it (in place: one float32 [V, C] buffer, hence one backward per forward). Under torch.compile the
gradient takes an out-of-place form that Inductor fuses into one pass; eagerly it is computed in place. Both
take their softmax in float32 whatever the autocast dtype.

The model does not import it: training passes it to forward (fused_loss=linear_cross_entropy), which calls it
from SmolLM2ForCausalLM.head_loss with the hidden states and the head's weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smollm2_model import IGNORE_INDEX

LOSS_CHUNK = 8192  # tokens per chunk of the fused loss: its float32 logits are (LOSS_CHUNK, vocab) at most
# Without gradients (validation) the chunk's logits are the largest thing alive, and train.py evaluates up to
# EVAL_TOKENS at once: 2048 x 49152 logits are 0.4 GB in float32 (plus 0.2 GB in bf16), not 1.6 + 0.8 GB.
NO_GRAD_CHUNK = 2048


def softmax_minus_onehot(logits, lse, targets, mask, out_dtype) -> torch.Tensor:
    # d(CE)/d(logits) per row: (softmax(logits) - onehot(target)) * mask. logits: (c, V) float32; lse, mask: (c,).
    # Compiled: one pure expression, which Inductor fuses into a single pass that reads the logits and
    # writes the out_dtype gradient. Eager: in place in the logits themselves (the caller's last use of them),
    # so a chunk costs one float32 (c, V) buffer and its out_dtype copy, not three float32 buffers.
    if torch.compiler.is_compiling():
        hit = targets[:, None] == torch.arange(logits.shape[1], device=logits.device)[None, :]
        return ((torch.exp(logits - lse[:, None]) - hit.to(logits.dtype)) * mask[:, None]).to(out_dtype)
    g = logits.sub_(lse[:, None]).exp_()
    g.scatter_add_(1, targets[:, None], -torch.ones_like(g[:, :1]))
    return g.mul_(mask[:, None].to(g.dtype)).to(out_dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """loss = mean CE(h @ w.T, targets), computed chunk by chunk over tokens.

    Each chunk's logits live only inside the loop; the gradients for h and w are formed there too
    (softmax - onehot is known in the forward), so backward only scales them. Peak extra memory is
    one chunk of logits plus a float32 grad for w, instead of all [N, V] logits in float32.
    """

    @staticmethod
    def forward(ctx, h, w, targets, chunk_size: int):
        # h: (N, C) compute dtype; w: (V, C) master dtype; targets: (N,) int64
        compute_dtype = h.dtype
        wc = w.to(compute_dtype)
        valid = targets != IGNORE_INDEX
        safe_t = targets.clamp(min=0)
        n_valid = valid.sum().clamp(min=1).float()
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk_size):
            hs, ts, ms = h[s:s + chunk_size], safe_t[s:s + chunk_size], valid[s:s + chunk_size]
            logits = (hs @ wc.t()).float()  # (c, V)
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, ts[:, None]).squeeze(1)
            loss_sum = loss_sum + ((lse - target_logit) * ms).sum()
            g = softmax_minus_onehot(logits, lse, ts, ms, compute_dtype)  # eager: overwrites the logits
            del logits
            grad_h[s:s + chunk_size] = g @ wc
            grad_w.add_(g.t() @ hs)  # a bf16 product accumulated in float32, as autocast's backward does
        inv_n = 1.0 / n_valid
        ctx.save_for_backward(grad_h, grad_w, inv_n)
        ctx.w_dtype = w.dtype
        return loss_sum * inv_n

    @staticmethod
    def backward(ctx, grad_out):
        # Scaled in place: a second float32 [V, C] buffer would raise the step's peak memory. So the
        # saved gradients serve one backward only (no retain_graph double backward).
        if getattr(ctx, "consumed", False):
            raise RuntimeError("linear_cross_entropy supports one backward per forward")
        ctx.consumed = True
        grad_h, grad_w, inv_n = ctx.saved_tensors
        scale = grad_out * inv_n
        return grad_h.mul_(scale.to(grad_h.dtype)), grad_w.mul_(scale).to(ctx.w_dtype), None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = LOSS_CHUNK) -> torch.Tensor:
    # h: (N, C), w: (V, C), targets: (N,) -> scalar float32 mean loss over targets != -100
    if torch.is_autocast_enabled(h.device.type):
        h = h.to(torch.get_autocast_dtype(h.device.type))
    if not (torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)):
        with torch.no_grad():
            wt = w.to(h.dtype).t()  # cast once, not per chunk
            chunk = min(chunk_size, NO_GRAD_CHUNK)
            losses = [F.cross_entropy((h[s:s + chunk] @ wt).float(), targets[s:s + chunk], ignore_index=IGNORE_INDEX,
                                      reduction="sum") for s in range(0, h.shape[0], chunk)]
            return torch.stack(losses).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, w, targets, chunk_size)
