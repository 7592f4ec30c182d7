"""Deterministic generator of the lakeforge demo domain.

The domain is a quick-service restaurant chain with a loyalty programme. The generator
writes three landing sources under one folder:

* ``stores/stores.csv`` - one static reference file;
* ``customers/customers_YYYY-MM-DD.csv`` - an initial snapshot on ``start_date`` and one
  incremental file every 7 days (new signups of the week plus a few updates);
* ``orders/orders_YYYY-MM-DD.jsonl`` - one JSON-lines file per day, with realistic dirt
  (truncated lines, null keys, null amounts, duplicates, late arrivals) and a schema change
  (``promo_code`` appears on ``column_added_date``);
* ``deliveries/deliveries_YYYY-MM-DD.csv`` - each delivery order's dispatch and delivery times,
  in the file of the day it was delivered (so it arrives after its order);
* ``staffing/staffing_YYYY-MM-DD.csv`` - drivers and cooks on shift per store and opening hour.

Delivery minutes follow the kitchen's load in the order's hour, the drivers on shift, the items
and the customer's distance (a latent trait seen only through past deliveries' travel times).

Customer behaviour is driven by latent traits (order rate, channel preference, loyalty,
price sensitivity) and a churn hazard that depends on observable behaviour, so churn is
learnable from recency/frequency features. On ``shift_date`` a regime shift (a lockdown)
changes the channel mix, amounts, order rates and the churn relation itself.

Everything is vectorised with numpy/pandas: the only Python loops run over days (a few
hundred iterations), files and the handful of malformed lines - never over orders, so its time
grows with the number of orders alone. The output depends only on the spec: the same
spec gives byte-identical files.

Customer ids have 6 digits (C000001); above 999,999 customers they widen to 7 digits.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import shutil
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

__all__ = ["DemoSpec", "generate_demo", "CHANNELS", "REGIONS", "PROMO_CODES"]

CHANNELS: tuple[str, ...] = ("dine_in", "takeaway", "delivery", "drive_thru")
DINE_IN, TAKEAWAY, DELIVERY, DRIVE_THRU = range(4)
REGIONS: tuple[str, ...] = ("north", "south", "east", "west")
PROMO_CODES: tuple[str, ...] = ("LOYAL10", "SUMMER", "APP5", "FRIES2")

# The source folders (and the manifest) this module owns under the landing folder.
SOURCE_DIRS: tuple[str, ...] = ("customers", "stores", "orders", "deliveries", "staffing")
MANIFEST_NAME = "_manifest.json"

CITY_POOLS: dict[str, tuple[str, ...]] = {
    "north": ("Northgate", "Aldermoor", "Kingsbridge", "Frostholm", "Ravenscar", "Highfield",
              "Elmstead", "Thornbury"),
    "south": ("Southport", "Marlow Bay", "Sunnyvale", "Portwick", "Coralton", "Seabrook",
              "Lindenhurst", "Harbourside"),
    "east": ("Eastwick", "Ashford", "Brightwater", "Oakridge", "Millbrook", "Dawnfield",
             "Cresthaven", "Riverton"),
    "west": ("Westfield", "Redcliff", "Pinecrest", "Stonebridge", "Fairhaven", "Sandridge",
             "Willowmere", "Copperton"),
}

# --- latent behaviour parameters -------------------------------------------------------
MEAN_ORDER_RATE = 0.12            # orders/day of an average customer (before multipliers)
ORDER_RATE_SHAPE = 1.3            # gamma shape: heterogeneous rates, many light customers
MEMBER_RATE_MULT = 1.3            # loyalty members order more ...
PRIMARY_CHANNEL_P = (0.38, 0.27, 0.20, 0.15)
# Weekday multipliers Mon..Sun (normalised below): weekends are busier.
WEEKDAY_MULT = np.array([0.9, 0.9, 0.95, 1.0, 1.15, 1.2, 1.05])
WEEKDAY_MULT = WEEKDAY_MULT / WEEKDAY_MULT.mean()
# Hour-of-day weights for 07..22: breakfast, lunch and dinner peaks; nothing at night.
HOUR_WEIGHTS = np.array([3, 4, 3, 3, 7, 12, 10, 5, 4, 4, 7, 11, 10, 7, 5, 3], dtype=float)
FIRST_HOUR = 7

# Daily churn hazard = BASE_HAZARD x multipliers of observable behaviour.
BASE_HAZARD = 0.0012
MEMBER_HAZARD = (1.35, 0.55)      # (non-member, member): ... and churn less
NEW_CUSTOMER_BOOST = 4.0          # extra hazard for brand-new customers, fading with tenure
NEW_CUSTOMER_DAYS = 60.0
CHANNEL_HAZARD_PRE = np.array([0.9, 1.0, 1.3, 0.8])    # by primary channel
CHANNEL_HAZARD_POST = np.array([3.0, 1.0, 0.8, 0.8])   # lockdown: dine-in lovers leave
DORMANT_HAZARD = 4.0
# Some customers go dormant first: their rate decays for weeks before they stop for good.
BASE_DORMANCY = 0.002
DORMANT_DECAY = 0.95              # rate multiplier per dormant day

# Deliveries: minutes = kitchen (items, load per cook) + wait for a driver + travel (distance).
PREP_BASE_MIN, PREP_PER_ITEM_MIN, PREP_PER_LOAD_MIN = 5.0, 1.0, 0.6
DRIVER_WAIT_MIN = 6.0             # per delivery in the hour beyond 1.5 per driver on shift
TRAVEL_MIN_PER_KM = 3.0
HIRING_DELAY_DAYS = 21            # after the shift, each store adds a driver three weeks late

# Regime shift (lockdown) effects.
SHIFT_DINE_IN_KEEP = 0.15                 # dine-in probability x 0.15
SHIFT_FREED_SPLIT = (0.0, 0.15, 0.70, 0.15)  # where the freed dine-in mass goes
SHIFT_RATE_MULT = np.array([0.6, 1.0, 1.15, 1.0])  # by primary channel

# Loyalty/home-store changes during the period (delivered as customer updates).
JOIN_PROB = 0.002                 # daily, live non-members
LEAVE_PROB = 0.0001               # daily, live members
MOVE_PROB = 0.00015               # daily, live customers

HOME_STORE_SHARE = 0.8            # orders at the home store; the rest in the same region

# Dirt rates (per order, disjoint kinds).
MALFORMED_RATE = 0.002
NULL_CUSTOMER_RATE = 0.001
NULL_AMOUNT_RATE = 0.003
DUPLICATE_RATE = 0.005
LATE_RATE = 0.01
CLEAN, MALFORMED, NULL_CUSTOMER, NULL_AMOUNT, DUPLICATE, LATE = range(6)

PROMO_RATE = 0.15
PRE_START_SHARE = 0.70            # share of customers who signed up before start_date
HISTORY_DAYS = 730                # pre-start signups reach back ~2 years
BURN_IN_STEP = 7                  # days per simulation step before start_date (speed)


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of one demo data set; the same spec always gives the same files."""

    seed: int = 42
    customers: int = 3000
    stores: int = 20
    days: int = 180
    start_date: datetime.date = date(2026, 5, 1)
    shift_date: datetime.date | None = date(2026, 9, 1)  # regime shift; None = no shift
    column_added_date: datetime.date | None = date(2026, 8, 1)  # promo_code appears from here
    dirty: bool = True  # False = no malformed/null/duplicate/late dirt at all

    def __post_init__(self) -> None:
        # Accept ISO strings and datetimes too (config overrides arrive as text).
        for name in ("start_date", "shift_date", "column_added_date"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, date.fromisoformat(value))
            elif isinstance(value, datetime.datetime):
                object.__setattr__(self, name, value.date())
        if self.start_date is None:
            raise ValueError("start_date is required")
        if self.customers < 1 or self.stores < 1 or self.days < 1:
            raise ValueError("customers, stores and days must all be >= 1")
        if self.stores > 999 or self.customers > 9_999_999:
            raise ValueError("at most 999 stores and 9,999,999 customers")


# ---------------------------------------------------------------------------------------
# small vectorised helpers
# ---------------------------------------------------------------------------------------

def _digit_codes(numbers: np.ndarray, width: int) -> np.ndarray:
    """Unicode code points (n, width) of non-negative integers, zero padded to width."""
    numbers = np.asarray(numbers, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (48 + (numbers[:, None] // powers) % 10).astype(np.uint32)


def _codes_to_text(codes: np.ndarray) -> np.ndarray:
    """Turn an (n, k) array of code points into an array of k-character strings."""
    codes = np.ascontiguousarray(codes, dtype=np.uint32)
    return codes.view(f"U{codes.shape[1]}").reshape(-1)


# Integer arithmetic on UCS-4 code points instead of per-row string formatting: ids and
# timestamps for millions of orders are built at C speed.

def _prefixed_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Format integers as a one-letter prefix plus zero-padded digits, vectorised."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size and numbers.max() >= 10**width:
        raise ValueError(f"id {numbers.max()} does not fit in {width} digits")
    codes = np.empty((numbers.size, width + 1), dtype=np.uint32)
    codes[:, 0] = ord(prefix)
    codes[:, 1:] = _digit_codes(numbers, width)
    return _codes_to_text(codes)


def _dates(start: date, day: np.ndarray) -> np.ndarray:
    """Format day offsets from start as 'YYYY-MM-DD', vectorised."""
    day = np.asarray(day, dtype=np.int64)
    if day.size == 0:
        return np.empty(0, dtype="U10")
    # Only a few hundred distinct days: format each once, then gather.
    lo = int(day.min())
    table = np.datetime_as_string(
        np.datetime64(start, "D") + np.arange(lo, int(day.max()) + 1).astype("timedelta64[D]"),
        unit="D").astype("U10")
    return table[day - lo]


def _timestamps(start: date, day: np.ndarray, second: np.ndarray, sep: str = "T") -> np.ndarray:
    """Format (day offset, second of day) pairs as 'YYYY-MM-DD<sep>HH:MM:SS', vectorised."""
    second = np.asarray(second, dtype=np.int64)
    codes = np.empty((second.size, 19), dtype=np.uint32)
    codes[:, :10] = _dates(start, day).view(np.uint32).reshape(-1, 10)
    codes[:, 10] = ord(sep)
    codes[:, 11:13] = _digit_codes(second // 3600, 2)
    codes[:, 13] = ord(":")
    codes[:, 14:16] = _digit_codes(second // 60 % 60, 2)
    codes[:, 16] = ord(":")
    codes[:, 17:19] = _digit_codes(second % 60, 2)
    return _codes_to_text(codes)


def _bool_text(values: np.ndarray) -> np.ndarray:
    """Lower-case 'true'/'false' text for a boolean array (what CSV readers expect)."""
    return np.where(values, "true", "false")


def _day_offset(start: date, when: date | None) -> int | None:
    """Days from start to when, or None when `when` is None."""
    return None if when is None else (when - start).days


def _random_hour_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds of day within opening hours (07:00-22:59:59) with meal-time peaks."""
    hours = rng.choice(len(HOUR_WEIGHTS), size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    return (hours + FIRST_HOUR) * 3600 + rng.integers(0, 3600, size=n)


# ---------------------------------------------------------------------------------------
# reference data
# ---------------------------------------------------------------------------------------

def _make_stores(spec: DemoSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the store reference data (regions balanced, all opened before any signup)."""
    n = spec.stores
    region = rng.permutation(np.arange(n) % len(REGIONS))
    city_pick = rng.integers(0, 8, size=n)
    city = np.array([CITY_POOLS[REGIONS[r]][c] for r, c in zip(region, city_pick)])  # n stores only
    # Opened 2.2 to 12 years before start: every store predates every customer signup.
    opened_day = -rng.integers(HISTORY_DAYS + 80, 12 * 365, size=n)
    has_drive_thru = rng.random(n) < 0.6
    seats = np.where(has_drive_thru, rng.integers(30, 80, size=n), rng.integers(40, 120, size=n))
    popularity = rng.lognormal(0.0, 0.35, size=n)  # bigger stores attract more home customers
    return {
        "region": region,
        "city": city,
        "opened_day": opened_day,
        "has_drive_thru": has_drive_thru,
        "seats": seats,
        "popularity": popularity / popularity.sum(),
        "id": _prefixed_ids("S", np.arange(1, n + 1), max(3, len(str(n)))),
    }


def _make_customers(spec: DemoSpec, rng: np.random.Generator, stores: dict, signup_window: int
                    ) -> dict[str, np.ndarray]:
    """Draw customers with static attributes and latent behavioural traits."""
    n = spec.customers
    pre = rng.random(n) < (PRE_START_SHARE if signup_window > 0 else 1.0)
    # Pre-start signups lean towards recent dates (the chain has been growing).
    pre_day = -1 - np.floor((HISTORY_DAYS - 1) * rng.random(n) ** 1.2).astype(np.int64)
    in_day = rng.integers(0, max(signup_window, 1), size=n)
    signup_day = np.sort(np.where(pre, pre_day, in_day))  # ids are issued in signup order
    home = rng.choice(spec.stores, size=n, p=stores["popularity"])
    primary = rng.choice(len(CHANNELS), size=n, p=PRIMARY_CHANNEL_P)
    # Channel preference: a dominant channel plus a personal spread over all four.
    pref = 0.45 * rng.dirichlet(np.full(len(CHANNELS), 0.6), size=n)
    pref[np.arange(n), primary] += 0.55
    return {
        "signup_day": signup_day,
        "signup_second": _random_hour_seconds(rng, n),
        "home": home,
        "member": rng.random(n) < 0.38,
        "birth_year": np.clip(np.round(rng.normal(1988, 11, size=n)), 1945, 2008).astype(np.int64),
        "base_rate": rng.gamma(ORDER_RATE_SHAPE, MEAN_ORDER_RATE / ORDER_RATE_SHAPE, size=n),
        "primary": primary,
        "pref": pref,
        "price_sens": rng.beta(2.0, 2.0, size=n),
        "party": rng.gamma(2.0, 0.45, size=n),       # drives items per order
        "id": _prefixed_ids("C", np.arange(1, n + 1), max(6, len(str(n)))),
    }


# ---------------------------------------------------------------------------------------
# behaviour simulation (loop over days, vectorised over customers)
# ---------------------------------------------------------------------------------------

def _simulate(spec: DemoSpec, rng: np.random.Generator, cust: dict, store_region: np.ndarray,
              event_window: int, shift_day: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate churn, dormancy, loyalty events and daily order counts; return orders and events."""
    n = spec.customers
    signup = cust["signup_day"]
    base_rate = cust["base_rate"]
    primary = cust["primary"]
    # Behaviour-driven parts of the hazard that never change: light buyers and price-sensitive
    # customers churn more, so frequency and spend carry signal.
    freq_factor = np.clip(np.sqrt(MEAN_ORDER_RATE / base_rate), 0.5, 3.0)
    static_hazard = BASE_HAZARD * freq_factor * (0.8 + 0.6 * cust["price_sens"])
    hazard_pre = static_hazard * CHANNEL_HAZARD_PRE[primary]
    hazard_post = static_hazard * CHANNEL_HAZARD_POST[primary]
    static_dormancy = BASE_DORMANCY * freq_factor
    # exp(-tenure/T) = exp(-day/T) * exp(signup/T): one array exp instead of one per step.
    # (Customers not yet signed up are never live, so their factor is irrelevant.)
    tenure_decay = np.exp(signup / NEW_CUSTOMER_DAYS)
    shift_rate = SHIFT_RATE_MULT[primary]

    alive = np.ones(n, dtype=bool)
    dormant = np.zeros(n, dtype=bool)
    dorm_mult = np.ones(n)
    member = cust["member"].copy()
    event_day = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    event_kind = np.zeros(n, dtype=np.int8)       # 0 none, 1 join, 2 leave, 3 move
    new_home = cust["home"].copy()

    def churn_step(day: int, step: int, live: np.ndarray, post: bool) -> None:
        """Apply `step` days of dormancy onset, decay and churn hazard to live customers."""
        member_factor = np.where(member, MEMBER_HAZARD[1], MEMBER_HAZARD[0])
        new_factor = 1.0 + (NEW_CUSTOMER_BOOST * np.exp(-day / NEW_CUSTOMER_DAYS)) * tenure_decay
        hazard = (hazard_post if post else hazard_pre) * member_factor * new_factor
        hazard[dormant] *= DORMANT_HAZARD
        dormancy = static_dormancy * member_factor
        if step > 1:   # survival over `step` days at a constant daily hazard
            hazard = 1.0 - (1.0 - np.minimum(hazard, 1.0)) ** step
            dormancy = 1.0 - (1.0 - dormancy) ** step
        u = rng.random((2, n))
        alive[live & (u[0] < hazard)] = False
        dorm_mult[dormant] *= DORMANT_DECAY ** step
        dormant[live & ~dormant & (u[1] < dormancy)] = True

    # Burn-in before start_date: only states evolve (no orders are written for that time), so
    # the customer base on start_date already has realistic churn and dormancy.
    first = int(min(signup.min(), 0))
    for day in range(first, 0, BURN_IN_STEP):
        step = min(BURN_IN_STEP, -day)
        churn_step(day, step, alive & (signup <= day), False)

    order_cust: list[np.ndarray] = []
    order_day: list[np.ndarray] = []
    start = spec.start_date
    for day in range(spec.days):
        post = shift_day is not None and day >= shift_day
        live = alive & (signup <= day)
        rate = (base_rate * np.where(member, MEMBER_RATE_MULT, 1.0) * dorm_mult
                * WEEKDAY_MULT[(start + datetime.timedelta(days=day)).weekday()])
        if post:
            rate = rate * shift_rate
        counts = rng.poisson(np.where(live, rate, 0.0))
        who = np.flatnonzero(counts)
        order_cust.append(np.repeat(who, counts[who]))
        order_day.append(np.full(int(counts[who].sum()), day, dtype=np.int64))

        # At most one master-data change per customer keeps the update feed simple and exact.
        # Changes happen only after signup and before the last customer file, so each is delivered.
        if 0 < day < event_window:
            can = live & (event_kind == 0) & (signup < day)
            u = rng.random(n)
            join = can & ~member & (u < JOIN_PROB)
            leave = can & member & (u < LEAVE_PROB)
            move = can & ~join & ~leave & (rng.random(n) < MOVE_PROB)
            member[join] = True
            member[leave] = False
            event_kind[join], event_kind[leave], event_kind[move] = 1, 2, 3
            event_day[join | leave | move] = day
            moved = np.flatnonzero(move)
            # A move stays in the region (customers rarely cross the country).
            new_home[moved] = _same_region_stores(cust["home"][moved], store_region, rng)
        churn_step(day, 1, live, post)

    events = {"day": event_day, "kind": event_kind, "new_home": new_home}
    return np.concatenate(order_cust), np.concatenate(order_day), events


def _same_region_stores(home: np.ndarray, store_region: np.ndarray, rng: np.random.Generator
                        ) -> np.ndarray:
    """Draw, for each home store index, a uniformly random store index in the same region."""
    by_region = np.argsort(store_region, kind="stable")     # store indices grouped by region
    counts = np.bincount(store_region, minlength=len(REGIONS))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    region = store_region[home]
    pick = np.floor(rng.random(home.size) * counts[region]).astype(np.int64)
    return by_region[offsets[region] + pick]


# ---------------------------------------------------------------------------------------
# orders and dirt
# ---------------------------------------------------------------------------------------

def _make_orders(spec: DemoSpec, rng: np.random.Generator, cust: dict, stores: dict,
                 events: dict, o_cust: np.ndarray, o_day: np.ndarray, shift_day: int | None,
                 promo_day: int | None) -> dict[str, np.ndarray]:
    """Turn (customer, day) order events into fully attributed orders, sorted by time."""
    n = o_cust.size
    second = _random_hour_seconds(rng, n)
    order = np.lexsort((o_cust, second, o_day))
    o_cust, o_day, second = o_cust[order], o_day[order], second[order]
    post = np.zeros(n, dtype=bool) if shift_day is None else o_day >= shift_day

    # Home store and loyalty as of the order day (master-data events take effect that day).
    changed = o_day >= events["day"][o_cust]
    kind = events["kind"][o_cust]
    home = np.where(changed & (kind == 3), events["new_home"][o_cust], cust["home"][o_cust])
    member = cust["member"][o_cust].copy()
    member[changed & (kind == 1)] = True
    member[changed & (kind == 2)] = False
    away = rng.random(n) >= HOME_STORE_SHARE
    store = home.copy()
    store[away] = _same_region_stores(home[away], stores["region"], rng)

    # Channel by inverse CDF of the customer's preference; after the shift dine-in keeps only
    # 15% of its probability and the freed mass moves mostly to delivery.
    pref = cust["pref"]
    freed = pref[:, DINE_IN] * (1.0 - SHIFT_DINE_IN_KEEP)
    pref_post = pref + freed[:, None] * np.array(SHIFT_FREED_SPLIT)
    pref_post[:, DINE_IN] -= freed
    cdf_pre, cdf_post = np.cumsum(pref, axis=1), np.cumsum(pref_post, axis=1)
    u = rng.random(n)
    channel = np.zeros(n, dtype=np.int64)
    for k in range(len(CHANNELS) - 1):     # 3 vectorised comparisons, not a loop over orders
        channel += u > np.where(post, cdf_post[o_cust, k], cdf_pre[o_cust, k])
    # No drive-thru lane at this store: the customer takes the food away instead.
    channel[(channel == DRIVE_THRU) & ~stores["has_drive_thru"][store]] = TAKEAWAY
    delivery = channel == DELIVERY

    items = 1 + rng.poisson(cust["party"][o_cust] + 0.4 * delivery)
    unit_price = (4.2 + 3.0 * (1.0 - cust["price_sens"][o_cust])) * rng.lognormal(0.0, 0.12, n)
    amount = items * unit_price
    # Delivery carries fees; during the lockdown the platforms charge more (fee + surge).
    amount = np.where(delivery & post, amount * 1.08 + 4.49, np.where(delivery, amount + 2.49, amount))

    promo = np.full(n, -1, dtype=np.int64)
    if promo_day is not None:
        eligible = (o_day >= promo_day) & (rng.random(n) < PROMO_RATE)
        # Members mostly redeem the loyalty code; others use the seasonal and app codes.
        code = np.where(member & (rng.random(n) < 0.6), 0, rng.integers(1, len(PROMO_CODES), n))
        promo = np.where(eligible, code, -1)
        amount = np.where(promo == 0, amount * 0.90, amount)
        amount = np.where(promo == 1, amount * 0.85, amount)
        amount = np.where(promo == 2, np.maximum(amount - 5.0, 1.0), amount)
        amount = np.where(promo == 3, np.maximum(amount - 2.0, 1.0), amount)

    return {
        "seq": np.arange(n, dtype=np.int64),     # position in time order; order_id = seq + 1
        # Compact dtypes: these arrays live until the files are written.
        "cust": o_cust.astype(np.int32),
        "day": o_day.astype(np.int32),
        "second": second.astype(np.int32),
        "store": store.astype(np.int32),
        "channel": channel.astype(np.int8),
        "items": items.astype(np.int16),
        "amount": np.round(amount, 2),
        "promo": promo.astype(np.int8),
    }


def _assign_dirt(spec: DemoSpec, rng: np.random.Generator, orders: dict, promo_day: int | None
                 ) -> dict[str, np.ndarray]:
    """Pick disjoint dirt kinds per order and lay out every written line (file day, copy flag)."""
    n = orders["seq"].size
    last = spec.days - 1
    day = orders["day"]
    kind = np.full(n, CLEAN, dtype=np.int8)
    file_day = day.copy()
    u = rng.random(n)
    delay = rng.integers(1, 4, size=n)
    dup_next = rng.random(n) < 0.5
    cut = rng.uniform(0.1, 0.9, size=n)
    if spec.dirty:
        edges = np.cumsum([MALFORMED_RATE, NULL_CUSTOMER_RATE, NULL_AMOUNT_RATE, DUPLICATE_RATE,
                           LATE_RATE])
        kind = (np.searchsorted(edges, u, side="right") + 1).astype(np.int8)
        kind[kind > LATE] = CLEAN
        # A late order lands 1-3 files later; orders whose late file would be past the last
        # file simply arrive on time.
        late = kind == LATE
        too_late = late & (day + delay > last)
        kind[too_late] = CLEAN
        file_day = np.where(kind == LATE, day + delay, day)

    dup = np.flatnonzero(kind == DUPLICATE)
    dup_file = file_day[dup] + dup_next[dup]
    # The copy must be byte-identical, so it never crosses the file where the promo_code key
    # appears, and it never goes past the last file.
    if promo_day is None:
        crosses = np.zeros(dup.size, dtype=bool)
    else:
        crosses = (file_day[dup] < promo_day) & (dup_file >= promo_day)
    dup_file = np.where((dup_file > last) | crosses, file_day[dup], dup_file)

    line_order = np.concatenate([orders["seq"], dup])
    line_file = np.concatenate([file_day, dup_file])
    line_copy = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(dup.size, dtype=np.int8)])
    # Within a file, lines follow order time; a same-file copy comes right after its original.
    sort = np.lexsort((line_copy, line_order, line_file))
    return {"kind": kind, "cut": cut, "line_order": line_order[sort],
            "line_file": line_file[sort], "line_copy": line_copy[sort]}


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------

def _write_text(path: pathlib.Path, text: str) -> None:
    """Write text as UTF-8 with '\\n' line endings regardless of platform."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _write_stores(folder: pathlib.Path, spec: DemoSpec, stores: dict) -> int:
    """Write stores/stores.csv and return its row count."""
    frame = pd.DataFrame({
        "store_id": stores["id"],
        "region": np.array(REGIONS)[stores["region"]],
        "city": stores["city"],
        "opened_date": _dates(spec.start_date, stores["opened_day"]),
        "has_drive_thru": _bool_text(stores["has_drive_thru"]),
        "seats": stores["seats"],
    })
    _write_text(folder / "stores.csv", frame.to_csv(index=False, lineterminator="\n"))
    return len(frame)


def _write_customers(folder: pathlib.Path, spec: DemoSpec, rng: np.random.Generator, cust: dict,
                     stores: dict, events: dict, n_files: int) -> dict[str, int]:
    """Write the initial customer snapshot and the weekly incremental files."""
    signup = cust["signup_day"]
    # File k (dated start + 7k) carries what happened in [start + 7(k-1), start + 7k); file 0
    # carries every customer who signed up before start_date.
    signup_file = np.where(signup < 0, 0, signup // 7 + 1)
    region_text = np.array(REGIONS)[stores["region"]]
    base = pd.DataFrame({
        "customer_id": cust["id"],
        "signup_date": _dates(spec.start_date, signup),
        "region": region_text[cust["home"]],
        "home_store_id": stores["id"][cust["home"]],
        "loyalty_member": _bool_text(cust["member"]),
        "birth_year": cust["birth_year"],
        "updated_at": _timestamps(spec.start_date, signup, cust["signup_second"], sep=" "),
        "_file": signup_file,
    })

    who = np.flatnonzero(events["kind"] > 0)
    kind = events["kind"][who]
    member = cust["member"][who] | (kind == 1)
    member &= kind != 2
    home = events["new_home"][who]
    # Event day > signup day, so an update's updated_at is always later than the signup row's.
    updates = pd.DataFrame({
        "customer_id": cust["id"][who],
        "signup_date": _dates(spec.start_date, signup[who]),
        "region": region_text[home],
        "home_store_id": stores["id"][home],
        "loyalty_member": _bool_text(member),
        "birth_year": cust["birth_year"][who],
        "updated_at": _timestamps(spec.start_date, events["day"][who],
                                  _random_hour_seconds(rng, who.size), sep=" "),
        "_file": events["day"][who] // 7 + 1,
    })
    rows = pd.concat([base, updates], ignore_index=True)
    rows = rows.sort_values(["_file", "updated_at", "customer_id"], kind="stable")
    assert rows["_file"].between(0, n_files - 1).all(), "customer row outside the file range"
    written = 0
    for k in range(n_files):
        part = rows[rows["_file"] == k].drop(columns="_file")
        name = f"customers_{spec.start_date + datetime.timedelta(days=7 * k)}.csv"
        _write_text(folder / name, part.to_csv(index=False, lineterminator="\n"))
        written += len(part)
    return {"files": n_files, "rows": written, "distinct_customers": int(rows["customer_id"].nunique())}


def _write_orders(folder: pathlib.Path, spec: DemoSpec, cust: dict, stores: dict, orders: dict,
                  dirt: dict, promo_day: int | None) -> dict[str, int]:
    """Write one JSON-lines file per day and return exact counts of what was written."""
    line_order, line_file = dirt["line_order"], dirt["line_file"]
    kind = dirt["kind"][line_order]
    is_copy = dirt["line_copy"].astype(bool)
    channel_text = np.array(CHANNELS)
    promo_text = np.array(PROMO_CODES + ("",), dtype=object)
    bounds = np.searchsorted(line_file, np.arange(spec.days + 1))

    total_lines = 0
    promo_key_lines = 0
    for day in range(spec.days):
        lo, hi = bounds[day], bounds[day + 1]
        idx = line_order[lo:hi]
        customer = cust["id"][orders["cust"][idx]].astype(object)
        customer[kind[lo:hi] == NULL_CUSTOMER] = None
        amount = orders["amount"][idx].copy()
        amount[kind[lo:hi] == NULL_AMOUNT] = np.nan
        # Ids and timestamps are formatted per file to keep peak memory low at 10M+ orders.
        frame = pd.DataFrame({
            "order_id": _prefixed_ids("O", idx + 1, 9).astype(object),
            "customer_id": customer,
            "store_id": stores["id"][orders["store"][idx]].astype(object),
            "order_ts": _timestamps(spec.start_date, orders["day"][idx],
                                    orders["second"][idx]).astype(object),
            "channel": channel_text[orders["channel"][idx]].astype(object),
            "items": orders["items"][idx],
            "amount": amount,
        })
        with_key = promo_day is not None and day >= promo_day
        if with_key:
            code = orders["promo"][idx]
            values = promo_text[code]          # -1 picks the sentinel, replaced by null below
            values[code < 0] = None
            frame["promo_code"] = values
        text = frame.to_json(orient="records", lines=True) if len(frame) else ""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        assert len(lines) == hi - lo
        # Malformed: the real line cut short (the order itself is lost, as in a real feed).
        # A proper prefix of a one-line JSON object can never parse.
        for pos in np.flatnonzero(kind[lo:hi] == MALFORMED):
            line = lines[pos]
            lines[pos] = line[: max(1, min(len(line) - 1, int(len(line) * dirt["cut"][idx[pos]])))]
        body = "\n".join(lines) + ("\n" if lines else "")
        _write_text(folder / f"orders_{spec.start_date + datetime.timedelta(days=day)}.jsonl", body)
        total_lines += body.count("\n")
        if with_key:
            promo_key_lines += int(np.count_nonzero(kind[lo:hi] != MALFORMED))

    assert total_lines == line_order.size
    malformed = int(np.count_nonzero(kind == MALFORMED))
    null_customer = int(np.count_nonzero(kind == NULL_CUSTOMER))
    duplicates = int(np.count_nonzero(is_copy))
    valid = total_lines - malformed - null_customer
    late = int(np.count_nonzero((line_file > orders["day"][line_order]) & ~is_copy
                                & (kind != MALFORMED) & (kind != NULL_CUSTOMER)))
    return {
        "files": spec.days,
        "lines": total_lines,
        "malformed_lines": malformed,
        "null_customer_id": null_customer,
        "null_amount": int(np.count_nonzero(kind == NULL_AMOUNT)),
        "duplicate_lines": duplicates,
        "late_lines": late,
        "valid_lines": valid,
        "distinct_valid_orders": valid - duplicates,   # every copy is a valid line of a valid order
        "lines_with_promo_code_key": promo_key_lines,
    }


def _store_hours(spec: DemoSpec, orders: dict) -> tuple[np.ndarray, int]:
    """Each order's (store, day, opening hour) cell index, and the number of cells."""
    hours = len(HOUR_WEIGHTS)
    hour = orders["second"].astype(np.int64) // 3600 - FIRST_HOUR
    cell = (orders["store"].astype(np.int64) * spec.days + orders["day"]) * hours + hour
    return cell, int(orders["store"].max(initial=0) + 1) * spec.days * hours


def _make_staffing(spec: DemoSpec, rng: np.random.Generator, stores: dict, shift_day: int | None
                   ) -> dict[str, np.ndarray]:
    """Drivers and cooks per store, day and opening hour (planned ahead; weekends and meal peaks staffed up)."""
    n, hours = spec.stores, len(HOUR_WEIGHTS)
    store, day, hour = (a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(spec.days), np.arange(hours),
                                                           indexing="ij"))
    base = 1 + np.round(stores["popularity"] * n * 1.5).astype(np.int64)
    peak = HOUR_WEIGHTS[hour] >= 10
    weekend = ((spec.start_date.weekday() + day) % 7) >= 4
    drivers = base[store] + peak + weekend + rng.integers(-1, 2, size=store.size)
    if shift_day is not None:
        drivers += day >= shift_day + HIRING_DELAY_DAYS
    cooks = 2 + stores["seats"][store] // 40 + peak
    return {"store": store, "day": day, "hour": hour, "drivers": np.maximum(drivers, 1), "cooks": cooks}


def _make_deliveries(spec: DemoSpec, rng: np.random.Generator, cust: dict, orders: dict,
                     staffing: dict) -> dict[str, np.ndarray]:
    """Dispatch and delivery times (seconds from start) of every delivery order."""
    cell, cells = _store_hours(spec, orders)
    load = np.bincount(cell, minlength=cells)
    is_delivery = orders["channel"] == DELIVERY
    deliveries_in_hour = np.bincount(cell[is_delivery], minlength=cells)
    idx = np.flatnonzero(is_delivery)
    c = cell[idx]
    # The staffing arrays are laid out (store, day, hour) like the cells.
    drivers, cooks = staffing["drivers"][c], staffing["cooks"][c]
    distance_km = rng.lognormal(np.log(2.5), 0.5, size=cust["id"].size)[orders["cust"][idx]]
    prep = (PREP_BASE_MIN + PREP_PER_ITEM_MIN * orders["items"][idx] + PREP_PER_LOAD_MIN * load[c] / cooks
            ) * rng.lognormal(0.0, 0.1, idx.size)
    wait = DRIVER_WAIT_MIN * np.maximum(0.0, deliveries_in_hour[c] / drivers - 1.5)
    travel = distance_km * TRAVEL_MIN_PER_KM * rng.lognormal(0.0, 0.15, idx.size)
    ordered = orders["day"][idx].astype(np.int64) * 86400 + orders["second"][idx]
    dispatched = ordered + np.round(60 * (prep + wait)).astype(np.int64)
    delivered = dispatched + np.round(60 * travel).astype(np.int64)
    return {"order": idx, "dispatched": dispatched, "delivered": delivered}


def _seconds_text(start: date, seconds: np.ndarray) -> np.ndarray:
    return _timestamps(start, seconds // 86400, seconds % 86400, sep=" ")


def _write_deliveries(folder: pathlib.Path, spec: DemoSpec, cust: dict, stores: dict, orders: dict,
                      deliveries: dict) -> dict[str, int]:
    """One CSV per day of delivered orders; a delivery after the last day has not arrived yet."""
    order = deliveries["order"]
    day = deliveries["delivered"] // 86400
    frame = pd.DataFrame({
        "order_id": _prefixed_ids("O", order + 1, 9),
        "customer_id": cust["id"][orders["cust"][order]],
        "store_id": stores["id"][orders["store"][order]],
        "dispatched_ts": _seconds_text(spec.start_date, deliveries["dispatched"]),
        "delivered_ts": _seconds_text(spec.start_date, deliveries["delivered"]),
    })
    rows = 0
    for d in range(spec.days):
        part = frame[day == d]
        _write_text(folder / f"deliveries_{spec.start_date + datetime.timedelta(days=d)}.csv",
                    part.to_csv(index=False, lineterminator="\n"))
        rows += len(part)
    return {"files": spec.days, "rows": rows, "not_yet_delivered": int(np.count_nonzero(day >= spec.days))}


def _write_staffing(folder: pathlib.Path, spec: DemoSpec, stores: dict, staffing: dict) -> dict[str, int]:
    """One CSV per day: drivers and cooks per store and opening hour."""
    seconds = staffing["day"].astype(np.int64) * 86400 + (staffing["hour"] + FIRST_HOUR) * 3600
    frame = pd.DataFrame({
        "store_id": stores["id"][staffing["store"]],
        "hour_start": _seconds_text(spec.start_date, seconds),
        "drivers": staffing["drivers"],
        "cooks": staffing["cooks"],
    })
    for d in range(spec.days):
        part = frame[staffing["day"] == d].sort_values(["hour_start", "store_id"], kind="stable")
        _write_text(folder / f"staffing_{spec.start_date + datetime.timedelta(days=d)}.csv",
                    part.to_csv(index=False, lineterminator="\n"))
    return {"files": spec.days, "rows": len(frame)}


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

def _spec_json(spec: DemoSpec) -> dict:
    """The spec as JSON-friendly values (dates as ISO strings)."""
    out = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        out[field.name] = value.isoformat() if isinstance(value, date) else value
    return out


def generate_demo(landing_dir: pathlib.Path, spec: DemoSpec) -> dict:
    """Write the demo landing files under landing_dir and return the manifest (also written to landing_dir/_manifest.json)."""
    landing_dir = pathlib.Path(landing_dir)
    landing_dir.mkdir(parents=True, exist_ok=True)
    # Delete only what this generator owns, so other sources in the landing folder survive.
    for name in SOURCE_DIRS:
        if (landing_dir / name).exists():
            shutil.rmtree(landing_dir / name)
    (landing_dir / MANIFEST_NAME).unlink(missing_ok=True)
    folders = {name: landing_dir / name for name in SOURCE_DIRS}
    for folder in folders.values():
        folder.mkdir()

    # Independent random streams per component: tuning one part never reshuffles the others.
    # (Spawned children depend only on their index: adding streams keeps the first six unchanged.)
    rng_stores, rng_customers, rng_sim, rng_orders, rng_dirt, rng_updates, rng_staffing, rng_deliveries = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(8))

    shift_day = _day_offset(spec.start_date, spec.shift_date)
    promo_day = _day_offset(spec.start_date, spec.column_added_date)
    # Customer files every 7 days, all inside the order period; new signups and updates only
    # happen before the last one, so every customer and every change is delivered.
    n_customer_files = (spec.days - 1) // 7 + 1
    signup_window = 7 * (n_customer_files - 1)

    stores = _make_stores(spec, rng_stores)
    cust = _make_customers(spec, rng_customers, stores, signup_window)
    o_cust, o_day, events = _simulate(spec, rng_sim, cust, stores["region"], signup_window,
                                      shift_day)
    orders = _make_orders(spec, rng_orders, cust, stores, events, o_cust, o_day, shift_day, promo_day)
    dirt = _assign_dirt(spec, rng_dirt, orders, promo_day)
    staffing = _make_staffing(spec, rng_staffing, stores, shift_day)
    deliveries = _make_deliveries(spec, rng_deliveries, cust, orders, staffing)

    manifest = {
        "spec": _spec_json(spec),
        "end_date": (spec.start_date + datetime.timedelta(days=spec.days - 1)).isoformat(),
        "stores": {"files": 1, "rows": _write_stores(folders["stores"], spec, stores)},
        "customers": _write_customers(folders["customers"], spec, rng_updates, cust, stores,
                                      events, n_customer_files),
        "orders": _write_orders(folders["orders"], spec, cust, stores, orders, dirt, promo_day),
        "deliveries": _write_deliveries(folders["deliveries"], spec, cust, stores, orders, deliveries),
        "staffing": _write_staffing(folders["staffing"], spec, stores, staffing),
    }
    _write_text(landing_dir / MANIFEST_NAME, json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return manifest
