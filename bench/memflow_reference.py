"""MemFlow written again with snntorch and torch: a numerical cross-check and a speed reference.

The spiking neurons are snntorch ``Leaky`` cells with beta = 1 (no leak), threshold 0 and reset to
zero, stepped T times; the graded spike of a neuron that fires is the membrane value it had just
before the reset (snntorch emits a binary spike, so o = spike * (mem + current)). The bridge links
become a dense (B, d + N) matrix. Everything else (alignment, retrieval, reinforcement, Gaussian
refresh, the temporal filter) is the maths of ``edge_runtime.kernels.memflow``, ``.align`` and
``.temporal`` in float64 torch tensor operations (the subspace map by ``torch.linalg.eigh`` of
the whole covariance, the temporal moments from a list of past posteriors), so the same state
gives the same numbers. Host side only (``bench``/``dev`` extras): the device path never imports
this module.
"""

from __future__ import annotations

import math

import numpy as np
import snntorch as snn
import torch

from edge_runtime.adapters.memflow import MemFlow


class TorchMemFlow:
    """A torch copy of a fitted ``MemFlow``: same graph, same statistics, same switches."""

    def __init__(self, model: MemFlow) -> None:
        model._check_fitted()
        w_entry_hub, w_hub_hub, bridge_src, bridge_w = model._graph
        d, n_hub, n = model.dim, model.n_hub, model.n_neurons
        self.model = model
        self.d, self.n_hub, self.n = d, n_hub, n
        self.w_entry_hub = torch.from_numpy(w_entry_hub.copy())
        self.w_hub_hub = torch.from_numpy(w_hub_hub.copy())
        dense = torch.zeros(bridge_src.shape[0], d + n)
        for b in range(bridge_src.shape[0]):
            for s in range(bridge_src.shape[1]):
                dense[b, int(bridge_src[b, s])] += float(bridge_w[b, s])
        self.bridge_in = dense[:, :d].contiguous()
        self.bridge_rec = dense[:, d:].contiguous()
        self.lif = snn.Leaky(beta=1.0, threshold=0.0, reset_mechanism="zero", reset_delay=False)
        f64 = lambda a: torch.from_numpy(np.array(a, np.float64))  # noqa: E731
        self.source, self.target = f64(model._source), f64(model._target)
        self.centre_source = f64(model._centre_source)
        self.scale = f64(model._scale)
        self.trace_mean, self.trace_sum = f64(model._trace_mean), f64(model._trace_sum)
        self.prior_w = torch.from_numpy(model._prior_w.copy())
        self.prior_b = torch.from_numpy(model._prior_b.copy())
        self.shift_sum, self.shift_weight = f64(model._shift_sum), f64(model._shift_weight)
        self.shift_sq = f64(model._shift_sq)
        n, s1, s2 = f64(model._input_stats)
        var = s2 / n - (s1 / n) ** 2
        self.input_var = var.clamp_min(1e-12 * float(var.mean()))
        self.basis, self.basis_var = f64(model._basis), f64(model._basis_var)
        self.proj_sum, self.proj_sq, self.mix = f64(model._proj_sum), f64(model._proj_sq), f64(model._mix)
        self.recent, self.frames = f64(model._recent), int(model._frames[0])
        count, size = int(model._ring_count[0]), len(model._ring)
        oldest = count % size if count > size else 0  # the ring's rows from the oldest frame on
        self.ring = [f64(model._ring[(oldest + i) % size]) for i in range(min(count, size))]
        self.slot_weight, self.slot_sums = f64(model._slot_weight), f64(model._slot_sums)
        self.slot_trace_sums, self.slot_y1, self.slot_y2 = (
            f64(a) for a in (model._slot_trace_sums, model._slot_y1, model._slot_y2)
        )
        self.slot_pi = f64(model._slot_pi)
        self.slot_source_mean, self.slot_trace_source = f64(model._slot_source_mean), f64(model._slot_trace_source)
        self.slot_source_y1, self.slot_source_y2 = f64(model._slot_source_y1), f64(model._slot_source_y2)
        count, size = int(model._slot_count[0]), len(model._slot_ring)
        oldest = count % size if count > size else 0
        self.slot_ring = [f64(model._slot_ring[(oldest + i) % size]) for i in range(min(count, size))]
        self.head_scale, self.memory_weight = (float(v) for v in model._weights)
        self.class_prior = f64(model._class_prior)
        self.belief = f64(model._belief)
        self.posteriors: list[torch.Tensor] = []  # every unfiltered posterior so far, oldest first
        self.temporal_decay = model.shift_decay
        self.tv, self.floor_v, self.blur_v = f64(model._tv), f64(model._floor_v), f64(model._blur_v)
        self.alive = f64(model._alive)
        # (K, N) here: the kernels keep them neuron-major (N, K).
        self.mu, self.hiv, self.lnorm = (f64(a).T.contiguous() for a in (model._mu, model._hiv, model._lnorm))
        self.present = torch.from_numpy(model._present.copy())
        self.tau = float(model._tau[0])

    @torch.no_grad()
    def propagate(self, z: torch.Tensor) -> torch.Tensor:
        """Traces (n, N) of centred rows z (n, d), float32."""
        z = z.to(torch.float32)
        a = torch.cat([z @ self.w_entry_hub.T, z @ self.bridge_in.T], dim=1)
        if not self.model.spiking:
            return a
        mem = torch.zeros_like(a)
        out = torch.zeros_like(a)
        trace = torch.zeros_like(a)
        for t in range(self.model.rounds):
            current = a.clone()
            if t > 0:
                current[:, : self.n_hub] += out[:, : self.n_hub] @ self.w_hub_hub.T
                current[:, self.n_hub :] += out @ self.bridge_rec.T
            before = mem + current
            spike, mem = self.lif(current, mem)
            out = spike * before
            trace += out
        return trace

    @torch.no_grad()
    def retrieve(self, m: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n, K) from traces (n, N), float64."""
        model = self.model
        m = m.to(torch.float64)
        ll = self.lnorm[None] - (m[:, None, :] - self.mu[None]) ** 2 * self.hiv[None]
        ll = torch.where(self.present[None, :, None], ll, torch.tensor(-math.inf, dtype=ll.dtype))
        best = ll.max(dim=1).values
        top = (
            torch.where(self.alive > 0, best, torch.tensor(-math.inf, dtype=best.dtype)).max(dim=1, keepdim=True).values
        )
        c = self.alive * torch.exp(best - top) if model.confidence else self.alive.expand_as(best)
        c = torch.nan_to_num(c)
        if model.readout == "product":
            ll0 = torch.where(self.present[None, :, None], ll, torch.zeros((), dtype=ll.dtype))
            logits = (ll0 * c[:, None, :]).sum(-1) / (c.sum(-1, keepdim=True) * self.tau)
            logits = torch.where(self.present[None], logits, torch.tensor(-math.inf, dtype=logits.dtype))
            return torch.softmax(logits, dim=1)
        post = torch.softmax(ll, dim=1)
        vote = (post * c[:, None, :]).sum(-1) / c.sum(-1, keepdim=True)
        return torch.softmax(torch.log(vote) / self.tau, dim=1)

    @torch.no_grad()
    def _refresh_class(self, k: int) -> None:
        model = self.model
        s0 = self.source[0, k]
        alpha = torch.where(
            (s0 > 0) & (model.source_weight > 0), model.source_weight / s0.clamp_min(1e-300), torch.ones_like(s0)
        )
        n = alpha * s0 + self.target[0, k]
        safe = n.clamp_min(1e-300)
        mean = (alpha * self.source[1, k] + self.target[1, k]) / safe
        self.mu[k] = torch.where(n > 0, mean, torch.zeros_like(mean))
        if model.variance == "class":
            var = torch.maximum((alpha * self.source[2, k] + self.target[2, k]) / safe - mean**2, self.floor_v)
            v = var + self.blur_v
            self.hiv[k] = torch.where(n > 0, 0.5 / v, self.hiv[k])
            self.lnorm[k] = torch.where(n > 0, -0.5 * (math.log(2 * math.pi) + torch.log(v / self.tv)), self.lnorm[k])
        self.present[k] = bool((n > 0).any())

    def _prior(self, weight: float) -> float:
        model = self.model
        if model.shift_fade:  # the source pseudo-frames fade with the EMA: shift_prior gamma^n
            return model.shift_prior * max(1.0 - (1.0 - model.shift_decay) * weight, 0.0)
        return model.shift_prior

    def _mix(self, weight: float) -> torch.Tensor:
        """A - I from the subspace statistics (edge_runtime.kernels.align.refresh_mix)."""
        total = self._prior(weight) + weight
        if weight <= 0.0 or not len(self.basis_var):
            return torch.zeros_like(self.mix)
        m = self.proj_sum / total
        cov = (self.proj_sq + self._prior(weight) * torch.diag(self.basis_var)) / total - torch.outer(m, m)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp(float(self.basis_var.min()) / 16, float(self.basis_var.max()) * 16)
        a = torch.diag(self.basis_var.sqrt()) @ vectors @ torch.diag(values.rsqrt()) @ vectors.T
        return a - torch.eye(len(a), dtype=a.dtype)

    def _temporal(self, p: torch.Tensor) -> torch.Tensor:
        """The filtered belief for posterior p (edge_runtime.kernels.temporal), its moments
        recomputed from the whole history with their EMA weights."""
        model, past = self.model, self.posteriors
        g, lag, n = self.temporal_decay, model.temporal_lag, len(self.posteriors)  # n frames before this one

        def agreement(l: int) -> tuple[float, float]:  # EMA-weighted sum of p_t . p_{t-l}, t < n, and weight
            ts = range(l, n)
            weights = [g ** (n - 1 - t) for t in ts]
            return sum(w * float(past[t] @ past[t - l]) for w, t in zip(weights, ts)), sum(weights)

        s = 0.0
        a_sum, n1 = agreement(1)
        b_sum, n_lag = agreement(lag)
        if n1 > 0 and n_lag > 0:
            c = sum(g ** (n - 1 - t) * float(past[t] @ past[t]) for t in range(1, n)) / n1
            a, b = a_sum / n1, b_sum / n_lag
            if c - b > 1e-9:
                s = (a - b) / (c - b)
                a2_sum, n2 = agreement(2)
                if n2 > 0 and a - b > 0:  # the lag-2 agreement undoes the bias, by at most 3x
                    s = min((a2_sum / n2 - b) / (a - b), 3.0 * s)
                s = min(max(s * n_lag / (n_lag + 10.0), 0.0), model.temporal_max)
        if n:
            belief = p / self.class_prior * (s * self.belief + (1.0 - s) * self.class_prior)
            self.belief = belief / belief.sum()
        else:
            self.belief = p.clone()
        self.posteriors.append(p)
        return self.belief.clone()

    @torch.no_grad()
    def step(self, x: torch.Tensor, learn: bool = True) -> torch.Tensor:
        """One frame (d,): the same sequence as ``edge_runtime.kernels.memflow.run_batch`` (or
        ``run_batch_balanced`` for a model with the class-balanced slots)."""
        model = self.model
        z = x.to(torch.float64)
        z = z / torch.linalg.vector_norm(z)
        if model.balanced:
            return self._step_balanced(z, learn)
        # The frames before this one set the centres; this frame joins the sums after (as FeatureShift).
        weight = float(self.shift_weight)
        prior = self._prior(weight)
        shifting = model.shift and prior + weight > 0
        factor = self.scale
        variance = float(self.input_var.sum())
        if shifting:
            centre = (prior * self.centre_source + self.shift_sum) / (prior + weight)
            second = (prior * (self.input_var + self.centre_source**2) + self.shift_sq) / (prior + weight)
            var_t = torch.maximum(second - centre**2, self.input_var / 16)
            variance = float(var_t.sum())
            if model.shift_spread:  # factors within [1/4, 4]
                factor = self.scale * torch.sqrt(torch.clamp(self.input_var / var_t, 1 / 16, 16))
        else:
            centre = self.centre_source
        w = 1.0
        if model.shift and learn:
            if model.shift_ring and len(self.basis_var):  # weight of a frame close to one of the last M
                y = self.basis @ (z - self.centre_source)
                if self.ring and model.shift_novelty > 0:
                    gap = min(float(((y - row) ** 2).sum()) for row in self.ring)
                    w = min(1.0, gap / (model.shift_novelty * float(self.basis_var.sum())))
                self.ring = (self.ring + [y])[-model.shift_ring :]
            elif model.shift_novelty > 0:  # weight of a frame close to the last few
                if self.frames > 0:
                    w = min(1.0, float(((z - self.recent) ** 2).sum()) / (model.shift_novelty * variance))
                    self.recent = 0.8 * self.recent + 0.2 * z
                else:
                    self.recent = z.clone()
            g = model.shift_decay**w  # a frame ages the sums by its weight
            self.shift_sum = g * self.shift_sum + w * z
            self.shift_sq = g * self.shift_sq + w * z**2
            self.shift_weight = g * self.shift_weight + w
            y = self.basis @ (z - self.centre_source)
            self.proj_sum = g * self.proj_sum + w * y
            self.proj_sq = g * self.proj_sq + w * torch.outer(y, y)
            self.frames += 1
        c = z - centre
        c = (c + self.basis.T @ (self.mix @ (self.basis @ c))) * factor
        if model.shift and learn and self.frames % model.shift_every == 0:
            self.mix = self._mix(float(self.shift_weight))
        m = self.propagate(c[None])
        if model.shift:
            raw = m.to(torch.float64)
            if shifting:
                target_mean = (prior * self.trace_mean + self.trace_sum) / (prior + weight)
                m = (raw + self.trace_mean - target_mean).to(torch.float32)
            if learn:
                self.trace_sum = model.shift_decay**w * self.trace_sum + w * raw[0]
        p = self._read_out(c, m, factor, w, learn)
        if learn and model.temporal:
            p = self._temporal(p)
        return p

    def _read_out(self, c: torch.Tensor, m: torch.Tensor, factor: torch.Tensor, w: float, learn: bool) -> torch.Tensor:
        """The memory's posterior times the source head's on the aligned frame c, then reinforcement
        (weight w): ``edge_runtime.kernels.memflow._read_out``."""
        model = self.model
        p = self.retrieve(m)[0]
        k_memory = k_prior = int(torch.argmax(p))
        if model.prior:
            f = c / factor + self.centre_source
            if model.prior_unit:  # the head reads the aligned feature at unit norm
                f = f / torch.linalg.vector_norm(f)
            logits = self.prior_w @ f.to(torch.float32) + self.prior_b
            k_prior = int(torch.argmax(logits))
            p = torch.softmax(self.head_scale * logits.to(torch.float64) + self.memory_weight * torch.log(p), dim=0)
        if learn and model.reinforce:
            k = int(torch.argmax(p))
            if float(p[k]) >= model.gate and k == k_memory == k_prior:
                m64 = m[0].to(torch.float64)
                e = torch.full_like(m64, w * float(p[k]))  # the frame's novelty weight counts here too
                if model.confidence_update:
                    e = e * torch.exp(-((m64 - self.mu[k]) ** 2) * self.hiv[k])
                g = model.decay**w
                self.target[0, k] = g * self.target[0, k] + e
                self.target[1, k] = g * self.target[1, k] + e * m64
                self.target[2, k] = g * self.target[2, k] + e * m64**2
                self._refresh_class(k)
        return p

    def _slot_references(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What each slot is measured from, (K, d) and (K, N): the source mean, or each class's."""
        model = self.model
        if model.slot_reference == "class":
            alpha = torch.ones_like(self.slot_pi)
        else:  # a class moves the centre by at most slot_leak of its distance from the mean
            alpha = torch.full_like(self.slot_pi, max(0.0, 1.0 - model.slot_leak / float(self.slot_pi.max())))
        references = []
        for means in (self.slot_source_mean, self.slot_trace_source):
            centre = self.slot_pi @ means
            references.append(centre + alpha[:, None] * (means - centre))
        return references[0], references[1]

    def _slot_offsets(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """sum_k pi_k (S_k - W_k r_k) / (P + W_k) for the input and the traces, and the gain
        (``edge_runtime.kernels.align``, "class-balanced")."""
        model = self.model
        total = model.slot_prior + self.slot_weight
        a = torch.where(self.slot_weight > 0, self.slot_pi / total, torch.zeros_like(total))
        reference, trace_reference = self._slot_references()
        offset = a @ (self.slot_sums - self.slot_weight[:, None] * reference)
        trace_offset = a @ (self.slot_trace_sums - self.slot_weight[:, None] * trace_reference)
        mass = float((self.slot_pi * self.slot_weight / total).sum())
        return offset, trace_offset, 1.0 / max(mass, model.slot_floor)

    def _mix_balanced(self) -> torch.Tensor:
        """A - I from the slots' second moments (``align.refresh_mix_balanced``)."""
        model = self.model
        if float(self.slot_weight.sum()) <= 0.0 or not len(self.basis_var):
            return torch.zeros_like(self.mix)
        total = model.slot_cov_prior + self.slot_weight
        gain = 1.0 / max(float((self.slot_pi * self.slot_weight / total).sum()), model.slot_floor)
        a = gain * self.slot_pi / total
        src = self.slot_weight[:, None]
        mean = self.slot_pi @ self.slot_source_y1 + a @ (self.slot_y1 - src * self.slot_source_y1)
        second = torch.einsum("k,kqs->qs", self.slot_pi, self.slot_source_y2) + torch.einsum(
            "k,kqs->qs", a, self.slot_y2 - src[:, :, None] * self.slot_source_y2
        )
        cov = second - torch.outer(mean, mean)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp(float(self.basis_var.min()) / 16, float(self.basis_var.max()) * 16)
        a = torch.diag(self.basis_var.sqrt()) @ vectors @ torch.diag(values.rsqrt()) @ vectors.T
        return a - torch.eye(len(a), dtype=a.dtype)

    def _step_balanced(self, z: torch.Tensor, learn: bool) -> torch.Tensor:
        """One normalised frame with the class-balanced slots: ``kernels.memflow._run_balanced``."""
        model = self.model
        offset, trace_offset, gain = self._slot_offsets()
        centre = self.centre_source + (gain * offset if model.shift else 0.0)
        learning = learn and model.shift
        w = 1.0
        if learning:
            y = self.basis @ (z - self.centre_source)
            if self.slot_ring and model.slot_novelty > 0 and float(self.basis_var.sum()) > 0:
                gap = min(float(((y - row) ** 2).sum()) for row in self.slot_ring)
                w = min(1.0, gap / (model.slot_novelty * float(self.basis_var.sum())))
            self.slot_ring = (self.slot_ring + [y])[-max(model.slot_ring, 1) :]
            self.frames += 1
        c = z - centre
        c = (c + self.basis.T @ (self.mix @ (self.basis @ c))) * self.scale
        m = self.propagate(c[None])
        raw = m[0].to(torch.float64)
        if model.shift:
            m = (raw - gain * trace_offset).to(torch.float32)[None]
        p = self._read_out(c, m, self.scale, w, learn)
        if learning:
            k = int(torch.argmax(p))
            e = w * float(p[k])
            if float(p[k]) >= model.slot_gate and e > 0.0:
                g = model.slot_decay**e
                self.slot_sums[k] = g * self.slot_sums[k] + e * z
                self.slot_trace_sums[k] = g * self.slot_trace_sums[k] + e * raw
                self.slot_y1[k] = g * self.slot_y1[k] + e * y
                self.slot_y2[k] = g * self.slot_y2[k] + e * torch.outer(y, y)
                self.slot_weight[k] = g * self.slot_weight[k] + e
            if self.frames % model.shift_every == 0:
                self.mix = self._mix_balanced()
        if learn and model.temporal:
            p = self._temporal(p)
        return p
