// Package wheel is a hierarchical timer wheel and a driver that sleeps until its next
// non-empty slot.
//
// Design. Time is counted in ticks (the driver uses 1 ms). The wheel has 6 levels of 256
// slots; a slot at level l spans 256^l ticks, so level 0 holds the next 256 ms slot by
// slot, level 1 the next 65 s in 256 ms slots, level 2 the next 4.7 h in 65 s slots and
// so on: 6 levels reach 2^48 ticks (about 8,900 years at 1 ms). A timer is filed at the
// level of the highest 8-bit digit in which its expiry differs from the wheel's current
// time, in the slot named by that digit. Periods of 1 s to a minute cascade once. When time reaches a slot above level 0, its
// timers cascade: each is refiled at a lower level by the same rule, so every timer
// ends in a level-0 slot of width one tick before it fires (Varghese & Lauck scheme 6;
// Kafka's purgatory), and cascades at most once per level.
//
// Error bound: a timer fires at the first Advance whose time is at or past its expiry
// tick, never before. The driver rounds expiries up to the next tick, so a timer fires
// at most one tick (plus the driver's wake-up latency) late and never early.
//
// Cost per operation: Add and Cancel are O(1) (a leading-zero count, a list link and a
// bitmap bit); each expired timer is touched at most once per level while cascading;
// NextExpiry is O(levels) bitmap scans and never walks empty slots, which is what lets
// the driver sleep until the next non-empty slot instead of ticking; NextFire adds a
// scan of that one slot so that the driver does not wake just to cascade. Timers are
// intrusive list nodes owned by the caller, so steady-state operation allocates nothing.
//
// A Wheel is not safe for concurrent use; the Driver adds the locking.
package wheel

import "math/bits"

const (
	levelBits = 8
	slots     = 1 << levelBits
	levels    = 6
	words     = slots / 64 // bitmap words per level
	// MaxTicks is the farthest ahead a timer can be set; later expiries are clamped.
	MaxTicks = 1<<(levelBits*levels) - 1
)

// Timer is one entry in the wheel. Its owner keeps it (usually embedded in a larger
// struct) and may reuse it after it fires or is cancelled.
type Timer struct {
	// Value is free for the owner, typically a pointer back to the owning struct.
	Value any

	when       int64
	next, prev *Timer
	level      uint8
	slot       uint8
	active     bool
}

// When returns the tick the timer was set to expire at.
func (t *Timer) When() int64 { return t.when }

// Active reports whether the timer is pending in a wheel.
func (t *Timer) Active() bool { return t.active }

// Wheel is the timer wheel. The zero value is a wheel at tick 0.
type Wheel struct {
	now      int64
	slots    [levels][slots]*Timer
	occupied [levels][words]uint64
	count    int
}

// New returns a wheel whose current time is now.
func New(now int64) *Wheel { return &Wheel{now: now} }

// Now returns the wheel's current tick.
func (w *Wheel) Now() int64 { return w.now }

// Len returns the number of pending timers.
func (w *Wheel) Len() int { return w.count }

// Add sets t to expire at tick when, moving it if it is already pending. A time at or
// before Now expires at the next Advance.
func (w *Wheel) Add(t *Timer, when int64) {
	if t.active {
		w.unlink(t)
	} else {
		w.count++
	}
	t.when = when
	w.file(t)
}

// Cancel removes t from the wheel and reports whether it was pending.
func (w *Wheel) Cancel(t *Timer) bool {
	if !t.active {
		return false
	}
	w.unlink(t)
	w.count--
	return true
}

// file puts a timer in the slot its expiry calls for, relative to w.now.
func (w *Wheel) file(t *Timer) {
	at := min(max(t.when, w.now), w.now+MaxTicks)
	level := 0
	if x := uint64(at ^ w.now); x != 0 {
		level = (bits.Len64(x) - 1) / levelBits
	}
	slot := uint8(at>>(levelBits*level)) & (slots - 1)
	head := &w.slots[level][slot]
	t.prev, t.next = nil, *head
	if *head != nil {
		(*head).prev = t
	}
	*head = t
	t.level, t.slot, t.active = uint8(level), slot, true
	w.occupied[level][slot/64] |= 1 << (slot % 64)
}

func (w *Wheel) unlink(t *Timer) {
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		head := &w.slots[t.level][t.slot]
		*head = t.next
		if t.next == nil {
			w.occupied[t.level][t.slot/64] &^= 1 << (t.slot % 64)
		}
	}
	if t.next != nil {
		t.next.prev = t.prev
	}
	t.next, t.prev, t.active = nil, nil, false
}

// next returns the start of the earliest non-empty slot and where it is. Slots of a
// level all lie after the current slot of that level (level 0: at or after), and any
// timer at a lower level expires before any timer at a higher one, so the lowest
// non-empty level holds the answer.
func (w *Wheel) next() (at int64, level int, slot uint8, ok bool) {
	for l := range levels {
		shift := uint(levelBits * l)
		cur := uint(w.now>>shift) & (slots - 1)
		s, found := firstFrom(&w.occupied[l], cur)
		if !found {
			continue
		}
		span := int64(1) << (shift + levelBits)
		return w.now&^(span-1) | int64(s)<<shift, l, s, true
	}
	return 0, 0, 0, false
}

// firstFrom returns the first set bit at or after from in a level's bitmap.
func firstFrom(occ *[words]uint64, from uint) (uint8, bool) {
	for i := from / 64; i < words; i++ {
		word := occ[i]
		if i == from/64 {
			word &= ^uint64(0) << (from % 64)
		}
		if word != 0 {
			return uint8(i*64 + uint(bits.TrailingZeros64(word))), true
		}
	}
	return 0, false
}

// NextExpiry returns the tick at which Advance next has work: a level-0 slot whose
// timers fire, or a higher slot whose timers cascade. ok is false when nothing is
// pending.
func (w *Wheel) NextExpiry() (tick int64, ok bool) {
	at, _, _, ok := w.next()
	return at, ok
}

// maxScan bounds how many timers NextFire looks at: past it, waking to cascade the
// slot costs less than scanning it.
const maxScan = 64

// NextFire returns the tick at which a driver should next advance: the earliest pending
// timer's expiry (Now if it is overdue), found by scanning the first non-empty slot of
// the lowest non-empty level, where the earliest timer is. A slot holding more than
// maxScan timers is not scanned; its start is returned, as NextExpiry does, and the
// driver wakes there to cascade it. Sparse wheels thus never wake for cascades alone.
func (w *Wheel) NextFire() (tick int64, ok bool) {
	at, level, slot, ok := w.next()
	if !ok || level == 0 {
		return at, ok
	}
	first, n := int64(-1), 0
	for t := w.slots[level][slot]; t != nil; t = t.next {
		if n++; n > maxScan {
			return at, true
		}
		if first < 0 || t.when < first {
			first = t.when
		}
	}
	return max(first, at), true
}

// Advance moves the wheel's time to now and calls fire for every timer that expires at
// or before it, in expiry order (timers of the same tick in no particular order). fire
// may Add or Cancel timers, but a timer it re-adds must expire after now or it fires
// again in this call.
func (w *Wheel) Advance(now int64, fire func(*Timer)) {
	for {
		at, level, slot, ok := w.next()
		if !ok || at > now {
			break
		}
		w.now = at
		// Pop from the slot itself rather than a detached list, so that fire may cancel
		// any timer, including ones still waiting in this slot.
		for t := w.slots[level][slot]; t != nil; t = w.slots[level][slot] {
			w.unlink(t)
			if level == 0 {
				w.count--
				fire(t)
			} else {
				w.file(t)
			}
		}
	}
	if now > w.now {
		w.now = now
	}
}
