"""A purposeful PushT data-collection policy: push the T towards random target poses.

The reference's weak policy jostles the block at random: it moves it a lot, but towards
nothing, often into and through the walls, so its data hold few deliberate pushes (the
paper trained on expert pushing data instead). This policy reads the true state, picks a
random target pose for the block, walks round the block to a contact behind it (relative
to the wanted motion) and pushes. A target is kept until it is reached or a step budget
runs out, so one episode holds several pushes, translations and rotations, in varied
directions.
"""

from __future__ import annotations

import numpy as np
import pymunk

from lewm.envs.pusht import (
    ACTION_SCALE,
    AGENT_RADIUS,
    BAR,
    BLOCK_MASS,
    STEM,
    SUCCESS_ANGLE,
    SUCCESS_POSITION,
    PushTEnv,
    polygon_sdf,
    pose_vertices,
)

# The T's outline (bar and stem joined), clockwise on screen (y points down), so the
# outward normal of edge a→b is (b_y − a_y, a_x − b_x)/|b − a|. Corners 3 and 6, where the
# stem meets the bar, are the concave ones.
OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)],
    dtype=np.float64,
)
CONCAVE = (3, 6)
CENTRE_OF_GRAVITY = np.array([0.0, 45.0])  # the env's: mean of the bar and stem centroids
BLOCK_REACH = 77.0  # farthest outline point from the centre of gravity (a stem corner)
# Radius of gyration √(I/m) with the env's moment (twice the bar's, taken by pymunk about
# the body origin): it converts a turn into the distance a push must travel to make it.
GYRATION = float(np.sqrt(2.0 * pymunk.moment_for_poly(BLOCK_MASS, BAR) / BLOCK_MASS))

ORBIT_RADIUS = BLOCK_REACH + AGENT_RADIUS + 10.0  # walking round this circle never touches
STANDOFF = 25.0  # how far behind a contact the agent lines up before pushing
PUSH_DEPTH = 45.0  # how far past the contact a push aims: sets the pushing speed
HYSTERESIS = 0.3  # how much worse than the best contact a push may get before re-planning
ROTATION_WEIGHT = 2.0  # turning is slower than translating; weigh it up so both get done
BOARD = (20.0, 492.0)  # where the agent may aim: inside the walls by about its radius
# Target centres of gravity: the whole T then clears the walls (5..506) by ~25 px in any
# orientation, so reaching a target never means squeezing the block against a wall.
TARGET_AREA = (110.0, 402.0)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _wrap(angle: float) -> float:
    return float(np.mod(angle + np.pi, 2.0 * np.pi) - np.pi)


def _contacts() -> tuple[np.ndarray, np.ndarray]:
    """Body-frame contact points around the T's outline and their outward normals.

    Edge points keep an agent radius away from the concave corners, which the disc cannot
    reach without touching the other edge. Each convex corner gets a fan of normals between
    its two edges' normals: a round pusher can press a corner in any of them, and these
    diagonal pushes move the T along directions that none of its edges faces.
    """
    n = len(OUTLINE)
    ends = [(OUTLINE[i], OUTLINE[(i + 1) % n]) for i in range(n)]
    edge_normals = [np.array([b[1] - a[1], a[0] - b[0]]) / np.linalg.norm(b - a) for a, b in ends]
    points, normals = [], []
    for i, (a, b) in enumerate(ends):
        length = float(np.linalg.norm(b - a))
        start = AGENT_RADIUS if i in CONCAVE else 5.0
        stop = length - (AGENT_RADIUS if (i + 1) % n in CONCAVE else 5.0)
        for t in np.linspace(start, stop, int((stop - start) // 10) + 2):
            points.append(a + (b - a) * t / length)
            normals.append(edge_normals[i])
    for i in range(n):
        if i in CONCAVE:
            continue
        for w in (0.25, 0.5, 0.75):
            normal = (1 - w) * edge_normals[i - 1] + w * edge_normals[i]
            points.append(OUTLINE[i])
            normals.append(normal / np.linalg.norm(normal))
    return np.array(points), np.array(normals)


CONTACT_POINTS, CONTACT_NORMALS = _contacts()


class PushTPusherPolicy:
    """Noisy pusher of the T towards random target poses, reading the true state.

    ``noise_std`` (action units) is Gaussian noise added to every action before clipping:
    it widens the actions a world model sees without undoing the pushes. ``speed`` caps the
    noise-free action's norm. ``target_steps`` caps how long one target is chased, so a
    push that goes wrong does not take the whole episode. All randomness comes from ``rng``,
    so a seed reproduces the actions exactly. ``targets_reached`` counts the targets reached,
    a measure of purpose that a random policy scores near zero on.
    """

    def __init__(
        self,
        env: PushTEnv,
        rng: np.random.Generator,
        noise_std: float = 0.2,
        speed: float = 0.8,
        target_steps: int = 80,
    ) -> None:
        self.env = env
        self.rng = rng
        self.noise_std = float(noise_std)
        self.speed = float(speed)
        self.target_steps = int(target_steps)
        self.targets_reached = 0
        self._target: np.ndarray | None = None
        self._target_age = 0
        self._contact: int | None = None
        self._pushing = False

    @property
    def target(self) -> np.ndarray | None:
        """The block pose (x, y, angle of the body origin, as in the state) being sought."""
        return None if self._target is None else self._target.copy()

    def _new_target(self, angle: float) -> None:
        cog = self.rng.uniform(*TARGET_AREA, size=2)
        turned = angle + self.rng.uniform(-np.pi / 2, np.pi / 2)
        origin = cog - _rotation(turned) @ CENTRE_OF_GRAVITY
        self._target = np.array([origin[0], origin[1], turned])
        self._target_age = 0
        self._contact, self._pushing = None, False

    def _reached(self, block: np.ndarray) -> bool:
        """The env's success tolerances, applied to the block alone."""
        assert self._target is not None
        close = np.linalg.norm(self._target[:2] - block[:2]) < SUCCESS_POSITION
        return bool(close and abs(_wrap(self._target[2] - block[2])) < SUCCESS_ANGLE)

    def _scores(self, block: np.ndarray) -> np.ndarray:
        """Cosine between what a push at each contact does and the wanted block motion.

        A frictionless push along −n at offset r from the centre of gravity moves the block
        along −n and turns it by (r × −n)/ρ² per unit of impulse (ρ: radius of gyration),
        so in (translation, ρ·rotation) space its effect points along (−n, r × −n / ρ); the
        wanted motion is the centre of gravity's error and ρ times the angle error. A cosine
        rather than a dot product keeps long lever arms from winning by size alone, so a
        pure translation prefers pushes through the centre of gravity. Contacts whose
        standoff point lies off the board come last: the agent ignores the walls, and
        pushing from outside them would drive the block into a wall.
        """
        assert self._target is not None
        rot = _rotation(block[2])
        cog = block[:2] + rot @ CENTRE_OF_GRAVITY
        error = self._target[:2] + _rotation(self._target[2]) @ CENTRE_OF_GRAVITY - cog
        turn = ROTATION_WEIGHT * GYRATION * _wrap(self._target[2] - block[2])
        wanted = np.array([error[0], error[1], turn])
        lever = (CONTACT_POINTS - CENTRE_OF_GRAVITY) @ rot.T
        push = -(CONTACT_NORMALS @ rot.T)
        torque = (lever[:, 0] * push[:, 1] - lever[:, 1] * push[:, 0]) / GYRATION
        effect = np.column_stack([push, torque])
        norms = np.linalg.norm(effect, axis=1) * max(float(np.linalg.norm(wanted)), 1e-6)
        score = effect @ wanted / norms
        standoff = block[:2] + CONTACT_POINTS @ rot.T - push * (AGENT_RADIUS + STANDOFF)
        on_board = np.all((standoff > BOARD[0]) & (standoff < BOARD[1]), axis=1)
        return np.where(on_board, score, score - 2.0)

    def _waypoint(self, agent: np.ndarray, goal: np.ndarray, block: np.ndarray) -> np.ndarray:
        """The goal, or a step round the block's orbit towards it while the block is in the
        way, so that the agent walks round the T instead of shoving it off course."""
        path = agent + np.linspace(0.0, 1.0, 12)[:, None] * (goal - agent)
        clearance = min(
            float(np.min(polygon_sdf(path[:, 0], path[:, 1], pose_vertices(p, block))))
            for p in (BAR, STEM)
        )
        if clearance > AGENT_RADIUS + 3.0:
            return goal
        cog = block[:2] + _rotation(block[2]) @ CENTRE_OF_GRAVITY
        here, there = agent - cog, goal - cog
        phi = np.arctan2(here[1], here[0])
        side = np.sign(_wrap(np.arctan2(there[1], there[0]) - phi)) or 1.0
        phi += side * 0.6
        return cog + ORBIT_RADIUS * np.array([np.cos(phi), np.sin(phi)])

    def __call__(self) -> np.ndarray:
        state = self.env.get_state().astype(np.float64)
        agent, block = state[:2], state[2:5]
        if self._target is not None and self._reached(block):
            self.targets_reached += 1
            self._target = None
        if self._target is None or self._target_age >= self.target_steps:
            self._new_target(block[2])
        self._target_age += 1

        rot = _rotation(block[2])
        normals = CONTACT_NORMALS @ rot.T
        touch = block[:2] + CONTACT_POINTS @ rot.T + normals * AGENT_RADIUS  # agent centres
        behind = np.sum((agent - touch) * normals, axis=1)
        lateral = np.linalg.norm(agent - touch - behind[:, None] * normals, axis=1)
        scores = self._scores(block)
        best = int(np.argmax(scores))
        good = scores >= max(0.2, float(scores[best]) - HYSTERESIS)
        if self._pushing:
            # Go on while the push still helps (the margin stops dithering between near
            # equal contacts) and the agent has not slid off round a corner.
            assert self._contact is not None
            k = self._contact
            if not good[k] or lateral[k] > 20.0 or behind[k] > STANDOFF + 20.0:
                self._contact, self._pushing = None, False
        # Lined up behind a contact: anywhere between it and its standoff point.
        lined_up = (lateral < 8.0) & (behind > -5.0) & (behind < STANDOFF + 8.0)
        if self._contact is None:
            # A good contact the agent is already behind saves a walk round the block.
            ready = good & lined_up
            ready_best = int(np.argmax(np.where(ready, scores, -np.inf)))
            self._contact = ready_best if ready.any() else best
        contact = self._contact
        self._pushing = self._pushing or bool(lined_up[contact])
        if self._pushing:
            # Aim past the contact, so the agent keeps pressing as the block gives way.
            goal = touch[contact] - normals[contact] * PUSH_DEPTH
        else:
            goal = self._waypoint(agent, touch[contact] + normals[contact] * STANDOFF, block)
        step = (np.clip(goal, *BOARD) - agent) / ACTION_SCALE
        norm = float(np.linalg.norm(step))
        if norm > self.speed:
            step *= self.speed / norm
        action = step + self.rng.normal(0.0, self.noise_std, size=2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
