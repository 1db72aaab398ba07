package wheel

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Driver runs a Wheel against a clock: it sleeps until the wheel's next non-empty slot
// (or until an earlier timer is added), advances the wheel and hands expired timers to
// fire. It never wakes for empty slots.
type Driver struct {
	clock clockwork.Clock
	res   time.Duration
	epoch time.Time
	fire  func(t *Timer, due time.Time)

	mu         sync.Mutex
	w          Wheel
	sleepUntil int64 // the tick Run sleeps until; MaxInt64 while idle
	wake       chan struct{}
	batch      []*Timer
}

// NewDriver returns a driver with ticks of resolution (at least 1 µs) on clock. fire is
// called from Run's goroutine, outside the driver's lock, with each expired timer and
// the time it was due; it may Add and Cancel timers but should return quickly.
func NewDriver(clock clockwork.Clock, resolution time.Duration, fire func(t *Timer, due time.Time)) *Driver {
	resolution = max(resolution, time.Microsecond)
	return &Driver{
		clock: clock, res: resolution, epoch: clock.Now(), fire: fire,
		sleepUntil: math.MaxInt64, wake: make(chan struct{}, 1),
	}
}

// tickAt rounds t up to a tick, so that a timer never fires before its time.
func (d *Driver) tickAt(t time.Time) int64 {
	off := t.Sub(d.epoch)
	if off <= 0 {
		return 0
	}
	return int64((off + d.res - 1) / d.res)
}

// timeOf is the time at which tick begins.
func (d *Driver) timeOf(tick int64) time.Time { return d.epoch.Add(time.Duration(tick) * d.res) }

// Slack is how late a periodic timer may fire so that timers share wake-ups: 1 % of its
// period, at most 100 ms.
func Slack(period time.Duration) time.Duration { return min(period/100, 100*time.Millisecond) }

// Add sets t to fire at time at, moving it if it is pending.
func (d *Driver) Add(t *Timer, at time.Time) { d.AddSlack(t, at, 0) }

// AddSlack sets t to fire at time at or up to slack later: the due time is rounded up to
// a multiple of slack, so that timers with the same slack share wake-ups (the kernel's
// implicit batching). A slack under two ticks is ignored.
func (d *Driver) AddSlack(t *Timer, at time.Time, slack time.Duration) {
	tick := d.tickAt(at)
	if g := int64(slack / d.res); g >= 2 {
		tick = (tick + g - 1) / g * g
	}
	d.mu.Lock()
	d.w.Add(t, tick)
	wake := tick < d.sleepUntil
	if wake {
		d.sleepUntil = tick
	}
	d.mu.Unlock()
	if wake {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// Cancel stops t and reports whether it was pending.
func (d *Driver) Cancel(t *Timer) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.Cancel(t)
}

// Len returns the number of pending timers.
func (d *Driver) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.Len()
}

// Due returns the time t is set to fire at.
func (d *Driver) Due(t *Timer) time.Time { return d.timeOf(t.When()) }

// Run drives the wheel until ctx ends.
func (d *Driver) Run(ctx context.Context) {
	sleep := d.clock.NewTimer(time.Hour)
	sleep.Stop()
	defer sleep.Stop()
	for {
		now := d.clock.Now()
		d.mu.Lock()
		d.w.Advance(d.floorTick(now), d.collect)
		next, ok := d.w.NextFire()
		d.sleepUntil = math.MaxInt64
		if ok {
			d.sleepUntil = next
		}
		batch := d.batch
		d.batch = d.batch[:0]
		d.mu.Unlock()

		for i, t := range batch {
			d.fire(t, d.timeOf(t.When()))
			batch[i] = nil
		}
		var timerC <-chan time.Time
		if ok {
			sleep.Reset(d.timeOf(next).Sub(d.clock.Now()))
			timerC = sleep.Chan()
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
			sleep.Stop()
		case <-timerC:
		}
	}
}

func (d *Driver) collect(t *Timer) { d.batch = append(d.batch, t) }

func (d *Driver) floorTick(t time.Time) int64 {
	off := t.Sub(d.epoch)
	if off <= 0 {
		return 0
	}
	return int64(off / d.res)
}
