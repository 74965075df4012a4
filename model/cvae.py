"""The CVAE / kgCVAE dialog model of Zhao, Zhao and Eskenazi (ACL 2017).

Notation: c is the condition (dialog context, topic, speaker metadata), x the response, z the
latent code, y the response's dialog act (kgCVAE only).

    prior        p(z | c)     = N(mu_p, diag(exp(logvar_p)))
    recognition  q(z | c, x)  = N(mu_q, diag(exp(logvar_q)))     (kgCVAE: q(z | c, x, y))
    decoder      p(x | c, z)  (kgCVAE: p(x | c, z, y) and p(y | c, z))

kgCVAE as in Zhao et al.'s code (``kgcvae_style = "zhao"``): the act embedding e(y) joins (c, z) in the decoder's
initial state and is fed beside the token embedding at every decoder step; the recognition network sees
tanh(W_y e(y) + b_y); at inference, where y is unknown, e(y) is replaced by the softmax-weighted embedding
sum_a p(a | c, z) e(a). ``"legacy"`` keeps this project's first kgCVAE (e(y) in the initial state only, the
raw e(y) in the recognition network, the argmax act at inference) for the models trained with it.

The training objective (weighed by the loop, the model never sees beta) is

    rc_loss + beta * kl + bow_loss (+ act_loss)

where rc_loss = -log p(x | c, z) summed over the response's tokens (mean over the batch),
kl = KL(q || p) in nats per response, bow_loss the bag-of-words auxiliary loss -sum_t log f(x_t)
with f = softmax(MLP(c, z)), and act_loss = -log p(y | c, z).

With ``rs_dim`` > 0 the model also has a response-selection head (the RS objective of PLATO, Bao et al., ACL
2020: does this reply follow this context?): s(c, x) = RS_SCALE * cos(g(c), h(e(x))), g and h two-layer MLPs,
e(x) the utterance encoder's vector of x (a cosine with a fixed temperature, as dual encoders score: an inner
product let both MLPs saturate to constants that tell the batch's replies from the distractors and nothing
else). ``rs_loss`` is the cross-entropy of picking the true response among
the batch's responses and each example's turn from elsewhere in its dialog (nats per response); the loop weighs
it with train.rs_weight. At serving, log softmax_i s(c, x_i) over a request's candidates is the reranker's
coherence term (model.rerank).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CVAEConfig
from .recurrent import SortedLengths, gru_layer, linear_cross_entropy


RS_SCALE = 10.0  # the response-selection cosine's inverse temperature


@dataclass
class Batch:
    """Model input. Context turns are oldest first; utterances carry <s> ... </s>."""

    ctx_tokens: torch.Tensor  # (B, C, U) long, padded with PAD_ID
    ctx_lens: torch.Tensor  # (B, C) long, tokens per context turn (0 for padding turns)
    ctx_turns: torch.Tensor  # (B,) long, number of real context turns (>= 1)
    ctx_flags: torch.Tensor  # (B, C) long, 1 where the context turn is the responder's own
    topic: torch.Tensor | None = None  # (B,) long, 0 = unknown
    meta: torch.Tensor | None = None  # (B, M) float
    resp_tokens: torch.Tensor | None = None  # (B, T) long: <s> x_1 ... x_n </s> PAD...
    resp_lens: torch.Tensor | None = None  # (B,) long, including <s> and </s>
    acts: torch.Tensor | None = None  # (B,) long, 0 = unknown
    # response selection's negatives: another turn of the same dialog per example (training.batching)
    dist_tokens: torch.Tensor | None = None  # (B, U) long: <s> ... </s> PAD...
    dist_lens: torch.Tensor | None = None  # (B,) long

    # Lengths stay on the CPU: packing wants them there, and reading them from a GPU would
    # synchronise the device on every batch.
    _HOST = ("ctx_lens", "ctx_turns", "resp_lens", "dist_lens")

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: (v.to(device, non_blocking=True)
                            if isinstance(v, torch.Tensor) and k not in self._HOST else v)
                        for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return self.ctx_tokens.shape[0]


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) summed over the last dimension, in nats.

    KL = 1/2 * sum( logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1 )
    """
    return 0.5 * torch.sum(
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0, dim=-1
    )


class UtteranceEncoder(nn.Module):
    """Bidirectional GRU over an utterance's tokens; the vector is both final states concatenated."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.rnn = nn.GRU(cfg.embed_dim, cfg.utt_hidden, batch_first=True, bidirectional=True)
        self.reference = False  # True: nn.GRU on a packed sequence (see CVAE.use_reference_path)

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor, embed: nn.Module) -> torch.Tensor:
        # tokens (N, U) padded ids, lens (N,) >= 1; only real tokens are embedded
        if self.reference:
            packed = pack_padded_sequence(embed(tokens), lens.cpu(), batch_first=True, enforce_sorted=False)
            _, h = self.rnn(packed)  # (2, N, H)
            return torch.cat([h[0], h[1]], dim=-1)
        flat = tokens.reshape(-1)
        return gru_layer(self.rnn, lambda idx: embed(flat.index_select(0, idx)), SortedLengths(lens),
                         width=tokens.shape[1])[1]  # (N, 2H): final forward state, final backward state


class ContextEncoder(nn.Module):
    """GRU over the context's utterance vectors, each joined with a one-hot of the speaker flag."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.rnn = nn.GRU(cfg.utt_dim + 2, cfg.ctx_hidden, batch_first=True)
        self.reference = False

    def forward(self, utt_vecs: torch.Tensor, flags: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        # utt_vecs (B, C, 2H), flags (B, C), turns (B,)
        x = torch.cat([utt_vecs, F.one_hot(flags, 2).to(utt_vecs.dtype)], dim=-1)  # (B, C, 2H+2)
        if self.reference:
            _, h = self.rnn(pack_padded_sequence(x, turns.cpu(), batch_first=True, enforce_sorted=False))
            return h[0]
        return gru_layer(self.rnn, x, SortedLengths(turns))[1]  # (B, Hc)


class PriorNetwork(nn.Module):
    """p(z | c): an MLP giving mean and log-variance."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.cond_dim, cfg.prior_hidden), nn.Tanh(),
                                 nn.Linear(cfg.prior_hidden, 2 * cfg.latent_dim))

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(cond).chunk(2, dim=-1)
        return mu, logvar


class RecognitionNetwork(nn.Module):
    """q(z | c, x[, y]): a linear map of the condition and the response vector, as in Zhao et al.

    kgCVAE: the act joins them as tanh(W_y e(y) + b_y) (Zhao's style, ``act_fc``) or as the raw e(y) (legacy)."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        in_dim = cfg.cond_dim + cfg.utt_dim + (cfg.act_dim if cfg.kgcvae else 0)
        self.net = nn.Linear(in_dim, 2 * cfg.latent_dim)
        self.act_fc = nn.Sequential(nn.Linear(cfg.act_dim, cfg.act_dim), nn.Tanh()) if cfg.zhao_kgcvae else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(features).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """GRU language model whose initial state is a linear map of (c, z[, y]); in Zhao's kgCVAE each step's
    input is the token embedding joined with the act vector (E + A features)."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        in_dim = cfg.cond_dim + cfg.latent_dim + (cfg.act_dim if cfg.kgcvae else 0)
        self.init = nn.Linear(in_dim, cfg.dec_hidden)
        self.rnn = nn.GRU(cfg.embed_dim + (cfg.act_dim if cfg.zhao_kgcvae else 0), cfg.dec_hidden, batch_first=True)
        self.out = nn.Linear(cfg.dec_hidden, cfg.vocab_size)

    def initial_state(self, features: torch.Tensor) -> torch.Tensor:
        return self.init(features)  # (B, Hd)

    def step(self, emb: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: step inputs (B, E[+A]), GRU state (B, Hd) -> logits (B, V), state (B, Hd)."""
        out, h = self.rnn(emb.unsqueeze(1), state.unsqueeze(0).contiguous())
        return self.out(out[:, 0]), h[0]


class CVAE(nn.Module):
    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        # One embedding shared by the encoders and the decoder, as in Zhao et al.
        self.utt_encoder = UtteranceEncoder(cfg)
        self.ctx_encoder = ContextEncoder(cfg)
        self.topic_embedding = nn.Embedding(cfg.n_topics, cfg.topic_dim) if cfg.n_topics else None
        self.prior_net = PriorNetwork(cfg)
        self.recog_net = RecognitionNetwork(cfg)
        self.decoder = Decoder(cfg)
        self.bow = nn.Sequential(nn.Linear(cfg.cond_dim + cfg.latent_dim, cfg.bow_hidden), nn.Tanh(),
                                 nn.Linear(cfg.bow_hidden, cfg.vocab_size))
        if cfg.kgcvae:
            self.act_embedding = nn.Embedding(cfg.n_acts, cfg.act_dim)
            self.act_predictor = nn.Sequential(nn.Linear(cfg.cond_dim + cfg.latent_dim, cfg.bow_hidden),
                                               nn.Tanh(), nn.Linear(cfg.bow_hidden, cfg.n_acts))
        if cfg.rs_dim:
            self.rs_context = nn.Sequential(nn.Linear(cfg.cond_dim, cfg.rs_dim), nn.Tanh(),
                                            nn.Linear(cfg.rs_dim, cfg.rs_dim))
            self.rs_response = nn.Sequential(nn.Linear(cfg.utt_dim, cfg.rs_dim), nn.Tanh(),
                                             nn.Linear(cfg.rs_dim, cfg.rs_dim))
        self.dropout = nn.Dropout(cfg.dropout)
        self.reference = False
        self.reset_parameters()

    def use_reference_path(self, on: bool = True) -> "CVAE":
        """Run training's forward pass through nn.GRU on packed sequences and full logits (the implementation
        before model.recurrent's fast path): what the fast path is tested and benchmarked against."""
        self.reference = self.utt_encoder.reference = self.ctx_encoder.reference = on
        return self

    def reset_parameters(self) -> None:
        # Zhao et al. initialise every weight uniformly in [-0.08, 0.08].
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    # ----- encoding -------------------------------------------------------------------------
    def encode(self, batch: Batch) -> torch.Tensor:
        """The condition c (B, cond_dim): context vector [, topic embedding][, metadata]."""
        B, C, U = batch.ctx_tokens.shape
        device = batch.ctx_tokens.device
        lens = batch.ctx_lens.reshape(-1).cpu()
        real = (lens > 0).nonzero().squeeze(1)  # only real turns go through the utterance encoder
        real_dev = real.to(device, non_blocking=True)
        flat_tokens = batch.ctx_tokens.reshape(B * C, U).index_select(0, real_dev)
        vecs = self.utt_encoder(flat_tokens, lens[real], self.embedding)  # (N, 2H)
        utt = vecs.new_zeros(B * C, vecs.shape[-1]).index_copy_(0, real_dev, vecs)
        utt = self.dropout(utt.view(B, C, -1))
        parts = [self.ctx_encoder(utt, batch.ctx_flags, batch.ctx_turns)]
        if self.topic_embedding is not None:
            topic = batch.topic if batch.topic is not None else torch.zeros(B, dtype=torch.long,
                                                                            device=utt.device)
            parts.append(self.topic_embedding(topic))
        if self.cfg.meta_dim:
            meta = batch.meta if batch.meta is not None else utt.new_zeros(B, self.cfg.meta_dim)
            parts.append(meta.to(utt.dtype))
        return torch.cat(parts, dim=-1)

    def prior(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior_net(cond)

    def posterior(self, cond: torch.Tensor, batch: Batch,
                  x_vec: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | c, x[, y]); ``x_vec`` (B, 2H), the response's utterance vector, when already computed."""
        if x_vec is None:
            x_vec = self.utt_encoder(batch.resp_tokens, batch.resp_lens, self.embedding)  # (B, 2H)
        parts = [cond, x_vec]
        if self.cfg.kgcvae:
            act = self.act_embedding(batch.acts)  # (B, A)
            parts.append(self.recog_net.act_fc(act) if self.recog_net.act_fc is not None else act)
        return self.recog_net(torch.cat(parts, dim=-1))

    def act_vector(self, act_logits: torch.Tensor, acts: torch.Tensor | None) -> torch.Tensor:
        """The act's embedding (B, A): of the given acts (teacher forcing), else of the predicted act: Zhao's
        style weighs every embedding by p(a | c, z), legacy takes the argmax. Index 0 ("unknown", never a
        target) is left out of both."""
        if acts is not None:
            return self.act_embedding(acts)
        if self.cfg.kgcvae_style == "zhao":
            probs = act_logits[:, 1:].softmax(dim=-1)  # (B, A-1)
            return probs.to(self.act_embedding.weight.dtype) @ self.act_embedding.weight[1:]
        return self.act_embedding(act_logits[:, 1:].argmax(dim=-1) + 1)

    def init_decoder(self, cond: torch.Tensor, z: torch.Tensor,
                     acts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder state from (c, z), and the act logits (kgCVAE) or None.

        The state is (B, Hd); in Zhao's kgCVAE it is (B, Hd + A): the GRU state followed by the act vector that
        every step feeds the decoder. Carrying the act in the state lets a decoding loop that keeps or drops rows
        of the state (model.decoding) keep each row's act without knowing about it. kgCVAE: conditions on the
        given acts (teacher forcing in training) or else on the predicted one (see :meth:`act_vector`)."""
        if not self.cfg.kgcvae:
            return self.decoder.initial_state(torch.cat([cond, z], dim=-1)), None
        act_logits = self.act_predictor(torch.cat([cond, z], dim=-1))  # (B, A)
        act = self.act_vector(act_logits, acts)  # (B, A)
        h = self.decoder.initial_state(torch.cat([cond, z, act], dim=-1))  # (B, Hd)
        if self.cfg.zhao_kgcvae:
            return torch.cat([h, act.to(h.dtype)], dim=-1), act_logits
        return h, act_logits

    def split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A decoder state -> (GRU state (B, Hd), act vector fed at every step (B, A) or None)."""
        if not self.cfg.zhao_kgcvae:
            return state, None
        H = self.cfg.dec_hidden
        return state[:, :H], state[:, H:]

    def decode_step(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B,), state (B, Hd[+A]) -> next-token logits (B, V), new state (B, Hd[+A])."""
        h, act = self.split_state(state)
        if act is None:
            return self.decoder.step(self.embedding(tokens), state)
        logits, h = self.decoder.step(torch.cat([self.embedding(tokens), act], dim=-1), h)
        return logits, torch.cat([h, act], dim=-1)

    def rnn_inputs(self, emb: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder GRU runs on over a teacher-forced sequence: embedded tokens (B, T, E) and a decoder
        state -> the step inputs (B, T, E[+A]) and the initial GRU state (1, B, Hd)."""
        h, act = self.split_state(state)
        if act is not None:
            emb = torch.cat([emb, act.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)
        return emb, h.unsqueeze(0).contiguous()

    def sequence_logprob(self, cond: torch.Tensor, z: torch.Tensor, tokens: list[list[int]]) -> list[float]:
        """log p(x | c, z) of given replies, teacher-forced, one row per reply: cond (B, Dc), z (B, Z), tokens
        the replies' ids without <s> and </s> (</s> is scored). Returns the B sums, nats. Only real positions go
        through the vocabulary projection: that is where the cost is."""
        B = len(tokens)
        if B == 0:
            return []
        T = max(len(t) for t in tokens) + 1
        inp = torch.full((B, T), PAD_ID, dtype=torch.long)
        tgt = torch.full((B, T), PAD_ID, dtype=torch.long)
        for i, t in enumerate(tokens):
            inp[i, :len(t) + 1] = torch.tensor([BOS_ID, *t])
            tgt[i, :len(t) + 1] = torch.tensor([*t, EOS_ID])
        device = cond.device
        inp, tgt = inp.to(device), tgt.to(device)
        state, _ = self.init_decoder(cond, z)
        out, _ = self.decoder.rnn(*self.rnn_inputs(self.embedding(inp), state))  # (B, T, Hd)
        real = (tgt != PAD_ID).reshape(-1).nonzero().squeeze(1)
        logits = self.decoder.out(out.reshape(B * T, -1).index_select(0, real)).float()  # (N_tok, V)
        # the fused log-softmax, then the targets: half the time of logit - logsumexp at (1000, 8000) on a CPU
        # core (10 vs 19 ms), the same values to 2e-6 (docs/benchmarks.md)
        tok = torch.log_softmax(logits, dim=1).gather(
            1, tgt.reshape(-1).index_select(0, real).unsqueeze(1)).squeeze(1).double()  # (N_tok,)
        row = torch.arange(B, device=device).repeat_interleave(T).index_select(0, real)
        return torch.zeros(B, dtype=torch.float64, device=device).index_add_(0, row, tok).cpu().tolist()

    def selection_scores(self, cond: torch.Tensor, x_vec: torch.Tensor) -> torch.Tensor:
        """s(c_i, x_j) for every pair: cond (B, Dc), x_vec (N, 2H) -> (B, N)."""
        g = F.normalize(self.rs_context(cond), dim=-1)  # (B, R)
        h = F.normalize(self.rs_response(x_vec), dim=-1)  # (N, R)
        return RS_SCALE * (g @ h.T)

    def coherence(self, cond: torch.Tensor, tokens: list[list[int]]) -> list[float]:
        """s(c_i, x_i) of each row: cond (B, Dc), tokens the replies' ids without <s> and </s>. Empty replies
        score -inf. Needs the response-selection head (rs_dim > 0)."""
        if not tokens:
            return []
        real = [i for i, t in enumerate(tokens) if t]
        out = [float("-inf")] * len(tokens)
        if not real:
            return out
        U = max(len(tokens[i]) for i in real) + 2
        ids = torch.full((len(real), U), PAD_ID, dtype=torch.long)
        for j, i in enumerate(real):
            ids[j, :len(tokens[i]) + 2] = torch.tensor([BOS_ID, *tokens[i], EOS_ID])
        lens = torch.tensor([len(tokens[i]) + 2 for i in real])
        x_vec = self.utt_encoder(ids.to(cond.device), lens, self.embedding)  # (N, 2H)
        g = F.normalize(self.rs_context(cond[real]), dim=-1)  # (N, R)
        s = RS_SCALE * (g * F.normalize(self.rs_response(x_vec), dim=-1)).sum(-1)
        for j, v in zip(real, s.float().cpu().tolist()):
            out[j] = v
        return out

    # ----- training -------------------------------------------------------------------------
    def _decoder_nll(self, inputs: torch.Tensor, state: torch.Tensor, targets: torch.Tensor,
                     resp_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-log p(x | c, z) summed over the batch's real target tokens, and their count (see model.recurrent).
        inputs, targets (B, T-1): the response shifted by one; state (B, Hd)."""
        B, Tm1 = targets.shape
        sl = SortedLengths(resp_lens.cpu() - 1)
        flat_in = inputs.reshape(-1)
        h0, act = self.split_state(state)

        def step_inputs(idx: torch.Tensor) -> torch.Tensor:  # flat positions row * Tm1 + t -> (n, E[+A])
            emb = self.dropout(self.embedding(flat_in.index_select(0, idx)))
            if act is None:
                return emb
            return torch.cat([emb, act.index_select(0, idx // Tm1).to(emb.dtype)], dim=-1)

        hidden, _ = gru_layer(self.decoder.rnn, step_inputs, sl, h0=h0, outputs=True, width=Tm1)  # (N_tok, Hd)
        flat = torch.from_numpy(sl.flat_index(Tm1)).to(targets.device, non_blocking=True)
        tgt = targets.reshape(-1).index_select(0, flat)  # (N_tok,)
        return linear_cross_entropy(self.dropout(hidden), self.decoder.out, tgt), torch.tensor(len(flat))

    def _decoder_nll_reference(self, emb: torch.Tensor, state: torch.Tensor, targets: torch.Tensor,
                               resp_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same through ``nn.GRU`` on a packed sequence and full logits: the reference the fast path is
        tested against, and the path of a quantized decoder."""
        x, h0 = self.rnn_inputs(emb, state)
        packed = pack_padded_sequence(x, (resp_lens - 1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.decoder.rnn(packed, h0)
        # Project only real (non-padding) positions: the vocabulary projection dominates the cost.
        B, Tm1 = targets.shape
        steps = (resp_lens.cpu() - 1).tolist()
        flat = torch.cat([torch.arange(n) + b * Tm1 for b, n in enumerate(steps)])
        flat = flat.to(targets.device, non_blocking=True)
        out_padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=Tm1)
        hidden = out_padded.reshape(B * Tm1, -1).index_select(0, flat)  # (N_tok, Hd)
        logits = self.decoder.out(self.dropout(hidden))  # (N_tok, V)
        tok_nll = F.cross_entropy(logits.float(), targets.reshape(-1).index_select(0, flat), reduction="none")
        return tok_nll.sum(), torch.tensor(sum(steps))

    def forward(self, batch: Batch, use_prior: bool = False) -> dict[str, torch.Tensor]:
        """Loss terms for a batch, each a scalar averaged over the batch's responses:

        rc_loss (nats per response), kl (nats per response), bow_loss, act_loss; plus
        rc_nll_sum and n_tokens (for per-token NLL / perplexity), and the posterior
        parameters ``mu_q``, ``logvar_q`` (B, Z) for latent diagnostics.
        ``use_prior`` decodes from a prior sample instead of the posterior.
        """
        assert batch.resp_tokens is not None and batch.resp_lens is not None
        cond = self.encode(batch)
        mu_p, logvar_p = self.prior(cond)
        x_vec = self.utt_encoder(batch.resp_tokens, batch.resp_lens, self.embedding)  # (B, 2H)
        mu_q, logvar_q = self.posterior(cond, batch, x_vec)
        mu, logvar = (mu_p, logvar_p) if use_prior else (mu_q, logvar_q)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterised sample
        kgcvae_acts = batch.acts if self.cfg.kgcvae else None
        state, act_logits = self.init_decoder(cond, z, kgcvae_acts)

        inputs = batch.resp_tokens[:, :-1]  # (B, T-1)
        targets = batch.resp_tokens[:, 1:]  # (B, T-1)
        if self.training and self.cfg.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.cfg.word_dropout
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop & (inputs != PAD_ID), UNK_ID)
        if not self.reference and isinstance(self.decoder.rnn, nn.GRU) and isinstance(self.decoder.out, nn.Linear):
            rc_nll_sum, n_tokens = self._decoder_nll(inputs, state, targets, batch.resp_lens)
        else:  # a quantized decoder (evaluation as served) has no weights to run the fast path on
            rc_nll_sum, n_tokens = self._decoder_nll_reference(self.dropout(self.embedding(inputs)), state,
                                                               targets, batch.resp_lens)
        mask = targets != PAD_ID  # (B, T-1)
        B = targets.shape[0]

        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)  # (B,)
        bow_logits = self.bow(torch.cat([cond, z], dim=-1)).float()  # (B, V)
        bow_logp = F.log_softmax(bow_logits, dim=-1)
        # Bag-of-words over the response tokens x_1..x_n and </s>, as Zhao et al. (no <s>, no pad).
        bow_nll = -(bow_logp.gather(1, targets) * mask).sum(dim=1)  # (B,)

        losses = {
            "rc_loss": rc_nll_sum / B,
            "kl": kl.mean(),
            "bow_loss": bow_nll.mean(),
            "rc_nll_sum": rc_nll_sum.detach(),
            "n_tokens": n_tokens.detach(),
            "mu_q": mu_q.detach(),
            "logvar_q": logvar_q.detach(),
            "z": z.detach(),
        }
        if self.cfg.kgcvae:
            assert batch.acts is not None and act_logits is not None  # a kgCVAE predicts the batch's dialog acts
            act_mask = batch.acts > 0
            act_nll = F.cross_entropy(act_logits.float(), batch.acts, reduction="none")
            losses["act_loss"] = (act_nll * act_mask).sum() / act_mask.sum().clamp(min=1)
        else:
            losses["act_loss"] = rc_nll_sum.new_zeros(())
        if self.cfg.rs_dim:
            candidates = x_vec
            if batch.dist_tokens is not None and batch.dist_lens is not None:
                dist = self.utt_encoder(batch.dist_tokens, batch.dist_lens, self.embedding)  # (B, 2H)
                candidates = torch.cat([x_vec, dist])  # (2B, 2H): the batch's responses, then the distractors
            scores = self.selection_scores(cond, candidates).float()  # (B, B or 2B)
            target = torch.arange(B, device=scores.device)
            losses["rs_loss"] = F.cross_entropy(scores, target)
            losses["rs_acc"] = (scores.argmax(dim=1) == target).float().mean().detach()
        else:
            losses["rs_loss"] = rc_nll_sum.new_zeros(())
            losses["rs_acc"] = rc_nll_sum.new_zeros(())
        return losses
