package gpu

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the GPU part of the status API (/v1/gpus) and of `probe-agent gpu --json`.
type Report struct {
	// Up says whether GPU data is flowing; Message says why not when it is not.
	Up            bool        `json:"up"`
	Message       string      `json:"message,omitempty"`
	DriverVersion string      `json:"driver_version,omitempty"`
	GPUs          []GPUReport `json:"gpus"`
}

// GPUReport is one GPU: what it is, its health with the reasons, the XIDs seen and its
// latest readings.
type GPUReport struct {
	Device
	Health     string            `json:"health"`
	Since      *time.Time        `json:"since,omitempty"`
	Reasons    []Reason          `json:"reasons"`
	XIDs       map[string]uint64 `json:"xids"`
	LastXID    uint64            `json:"last_xid,omitempty"`
	Readings   *Readings         `json:"readings,omitempty"`
	Containers []string          `json:"containers,omitempty"`
}

// Readings are a GPU's latest sampled values; a reading the GPU does not give is left
// out.
type Readings struct {
	At                     time.Time `json:"at"`
	TemperatureCelsius     *uint32   `json:"temperature_celsius,omitempty"`
	SlowdownCelsius        *uint32   `json:"slowdown_temperature_celsius,omitempty"`
	ShutdownCelsius        *uint32   `json:"shutdown_temperature_celsius,omitempty"`
	PowerWatts             *float64  `json:"power_watts,omitempty"`
	MemoryUsedBytes        *uint64   `json:"memory_used_bytes,omitempty"`
	MemoryTotalBytes       *uint64   `json:"memory_total_bytes,omitempty"`
	UtilizationPercent     *uint32   `json:"utilization_percent,omitempty"`
	ECCUncorrectedVolatile *uint64   `json:"ecc_uncorrected_volatile,omitempty"`
	RowRemapPending        *bool     `json:"row_remap_pending,omitempty"`
	RowRemapFailed         *bool     `json:"row_remap_failed,omitempty"`
	RecoveryAction         *uint32   `json:"recovery_action,omitempty"`
	Lost                   bool      `json:"lost,omitempty"`
}

func ptr[T any](o Opt[T]) *T {
	if !o.OK {
		return nil
	}
	return &o.V
}

// NewReport turns a snapshot into a report; containers, when not nil, lists the
// containers on each GPU by UUID.
func NewReport(s Snapshot, containers map[string][]string) Report {
	r := Report{Up: s.Up, DriverVersion: s.DriverVersion, GPUs: []GPUReport{}}
	if !s.Up {
		r.Message = "no GPU data: the last poll failed or none has run yet"
	}
	for _, st := range s.GPUs {
		g := GPUReport{Device: st.Device, Health: st.Verdict.State.String(), Reasons: st.Verdict.Reasons,
			XIDs: map[string]uint64{}, LastXID: st.LastXID, Containers: containers[st.Device.UUID]}
		if g.Reasons == nil {
			g.Reasons = []Reason{}
		}
		if !st.Verdict.Since.IsZero() {
			since := st.Verdict.Since
			g.Since = &since
		}
		for x, n := range st.XIDs {
			g.XIDs[strconv.FormatUint(x, 10)] = n
		}
		if sm := st.Sample; sm != nil {
			rd := &Readings{At: sm.At, TemperatureCelsius: ptr(sm.TempC), SlowdownCelsius: ptr(sm.SlowdownTempC),
				ShutdownCelsius: ptr(sm.ShutdownTempC), MemoryUsedBytes: ptr(sm.MemUsedBytes),
				MemoryTotalBytes: ptr(sm.MemTotalBytes), UtilizationPercent: ptr(sm.UtilGPUPct),
				ECCUncorrectedVolatile: ptr(sm.ECCUncorrVolatile), RowRemapPending: ptr(sm.RemapPending),
				RowRemapFailed: ptr(sm.RemapFailed), RecoveryAction: ptr(sm.RecoveryAction), Lost: sm.Lost}
			if sm.PowerMilliwatts.OK {
				w := float64(sm.PowerMilliwatts.V) / 1000
				rd.PowerWatts = &w
			}
			g.Readings = rd
		}
		r.GPUs = append(r.GPUs, g)
	}
	return r
}

// WriteTable prints the report for people: one line per GPU.
func (r Report) WriteTable(w io.Writer) error {
	if len(r.GPUs) == 0 {
		msg := r.Message
		if msg == "" {
			msg = "no GPUs found"
		}
		_, err := fmt.Fprintln(w, msg)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "GPU\tUUID\tNAME\tHEALTH\tTEMP\tPOWER\tMEMORY\tREASONS\n")
	for _, g := range r.GPUs {
		temp, power, mem := "-", "-", "-"
		if rd := g.Readings; rd != nil {
			if rd.TemperatureCelsius != nil {
				temp = fmt.Sprintf("%d°C", *rd.TemperatureCelsius)
			}
			if rd.PowerWatts != nil {
				power = fmt.Sprintf("%.0fW", *rd.PowerWatts)
			}
			if rd.MemoryUsedBytes != nil && rd.MemoryTotalBytes != nil {
				mem = fmt.Sprintf("%d/%d MiB", *rd.MemoryUsedBytes>>20, *rd.MemoryTotalBytes>>20)
			}
		}
		reasons := make([]string, 0, len(g.Reasons))
		for _, rs := range g.Reasons {
			if rs.XID != 0 {
				reasons = append(reasons, fmt.Sprintf("xid %d (%s)", rs.XID, rs.Detail))
			} else {
				reasons = append(reasons, rs.Code)
			}
		}
		if len(reasons) == 0 {
			reasons = append(reasons, "-")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.UUID, g.Name, g.Health, temp, power, mem,
			strings.Join(reasons, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.DriverVersion != "" {
		fmt.Fprintf(w, "driver %s\n", r.DriverVersion)
	}
	if r.Message != "" {
		fmt.Fprintln(w, r.Message)
	}
	return nil
}
