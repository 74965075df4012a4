"""Figures of the synthetic experiment (training.synthetic): the latent space divided by sequence at chosen steps
(latent.png), the training curves (curves.png) and an animation over every snapshot (latent.gif with Pillow,
else one PNG per snapshot under frames/)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

LIM = 4.0  # axes span [-LIM, LIM]: the prior N(0, I) and the posteriors of a 2-D code fit


def panel_steps(steps: int, cycles: int, ratio: float) -> list[int]:
    """Steps shown in latent.png: in each cycle, a quarter of the way up its ramp (cyclical beta = 0.25, just
    after a restart) and the cycle's end (beta = 1 for both schedules): where the schedules differ."""
    period = steps / cycles
    wanted = [x for k in range(cycles) for x in (period * (k + ratio / 4), period * (k + 1))]
    return sorted({int(round(s)) for s in wanted})


def _nearest(history: list[dict[str, Any]], step: int) -> dict[str, Any]:
    return min(history, key=lambda h: abs(h["step"] - step))


def _setup(ax, title: str = "") -> Any:
    """Fixed axes with a dashed circle at 2 sd of the prior; returns the title artist."""
    t = np.linspace(0, 2 * math.pi, 100)
    ax.plot(2 * np.cos(t), 2 * np.sin(t), color="gray", linestyle="--", linewidth=0.6)
    ax.set_xlim(-LIM, LIM)
    ax.set_ylim(-LIM, LIM)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)
    return ax.set_title(title, fontsize=7)


def _points(snap: dict[str, Any], eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior samples mu_i + sd_i * eps_i, all sequences stacked (N * S, 2), and the means (N, 2). The same
    eps in every panel and frame: only the posteriors move."""
    mu = np.asarray(snap["mu"])
    std = np.exp(0.5 * np.asarray(snap["logvar"]))
    return (mu[:, None, :] + std[:, None, :] * eps).reshape(-1, 2), mu


def _artists(ax, n: int, n_samples: int) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    colors = np.array([plt.get_cmap("tab10")(i % 10) for i in range(n)])
    empty = np.zeros((n * n_samples, 2))
    pts = ax.scatter(empty[:, 0], empty[:, 1], s=2, alpha=0.35, c=np.repeat(colors, n_samples, axis=0), linewidths=0)
    means = ax.scatter(np.zeros(n), np.zeros(n), s=28, c=colors, edgecolors="black", linewidths=0.6, zorder=3)
    return pts, means


def _noise(n: int, n_samples: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, n_samples, 2))


def _caption(snap: dict[str, Any], n: int) -> str:
    return (f"step {snap['step']}, beta {snap['beta']:.2f}\nKL {snap['kl']:.2f}, MI {snap['mi']:.2f}, "
            f"separated {snap['separated']}/{n}")


def latent_grid(histories: dict[str, list[dict[str, Any]]], cfg: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    steps = panel_steps(cfg.steps, cfg.cycles, cfg.ratio)
    kinds = list(histories)
    fig, axes = plt.subplots(len(kinds), len(steps), figsize=(2.1 * len(steps), 2.5 * len(kinds)), squeeze=False)
    eps = _noise(cfg.n_sequences, 150)
    for r, kind in enumerate(kinds):
        for c, step in enumerate(steps):
            snap = _nearest(histories[kind], step)
            _setup(axes[r][c], _caption(snap, cfg.n_sequences))
            pts, means = _artists(axes[r][c], cfg.n_sequences, 150)
            samples, mu = _points(snap, eps)
            pts.set_offsets(samples)
            means.set_offsets(mu)
        axes[r][0].set_ylabel(kind, fontsize=9)
    fig.suptitle(f"Posterior q(z | x) of each of {cfg.n_sequences} sequences (one colour each; dots: samples, "
                 "ringed: means; dashed: 2 sd of the prior)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(histories: dict[str, list[dict[str, Any]]], cfg: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    keys = (("beta", "beta"), ("kl", "KL (nats)"), ("rc", "reconstruction (nats)"), ("mi", "MI (nats)"),
            ("separated", "sequences separated"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.6))
    for ax, (key, label) in zip(axes, keys):
        for i, (kind, hist) in enumerate(histories.items()):
            ax.plot([h["step"] for h in hist], [h[key] for h in hist], color=f"C{i}", label=kind, linewidth=1)
        if key == "mi":
            ax.axhline(math.log(cfg.n_sequences), color="gray", linestyle="--", linewidth=0.8, label="ceiling log N")
        ax.set_xlabel("step", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_animation(histories: dict[str, list[dict[str, Any]]], cfg: Any, out_dir: Path) -> str:
    """latent.gif (Pillow present) or frames/NNNN.png; returns the name written. The artists are made once and
    moved frame by frame."""
    import matplotlib.pyplot as plt

    kinds = list(histories)
    n_frames = min(len(h) for h in histories.values())
    n, n_samples = cfg.n_sequences, 80
    eps = _noise(n, n_samples)
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.6 * len(kinds), 2.9), squeeze=False)
    panels = []
    for ax, kind in zip(axes[0], kinds):
        title = _setup(ax, f"{kind}\n" + _caption(histories[kind][0], n))
        panels.append((kind, title, *_artists(ax, n, n_samples)))
    fig.tight_layout()

    def frame(k: int) -> None:
        for kind, title, pts, means in panels:
            snap = histories[kind][k]
            samples, mu = _points(snap, eps)
            pts.set_offsets(samples)
            means.set_offsets(mu)
            title.set_text(f"{kind}\n" + _caption(snap, n))

    if importlib.util.find_spec("PIL") is not None:
        from matplotlib.animation import FuncAnimation, PillowWriter

        FuncAnimation(fig, frame, frames=n_frames).save(out_dir / "latent.gif", writer=PillowWriter(fps=6), dpi=70)
        plt.close(fig)
        return "latent.gif"
    frames = out_dir / "frames"
    frames.mkdir(exist_ok=True)
    for k in range(n_frames):
        frame(k)
        fig.savefig(frames / f"{k:04d}.png", dpi=70)
    plt.close(fig)
    return "frames/"


def write_figures(histories: dict[str, list[dict[str, Any]]], cfg: Any, out_dir: Path,
                  animation: bool = True) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    latent_grid(histories, cfg, out_dir / "latent.png")
    curves(histories, cfg, out_dir / "curves.png")
    files = {"latent": "latent.png", "curves": "curves.png"}
    if animation:
        files["animation"] = write_animation(histories, cfg, out_dir)
    return files
