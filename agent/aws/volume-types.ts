// What each EBS volume type takes of CreateVolume's performance settings (EC2 API Reference,
// CreateVolume: Iops "Required for io1 and io2 volumes. Optional for gp3 volumes. Omit for all
// other volume types"; Throughput "Supported for gp3 volumes only. Omit for all other volume
// types"). EC2 refuses the others with InvalidParameterCombination ("The parameter iops is not
// supported for gp2 volumes", "throughput can only be specified for volumeType gp3"), while
// DescribeVolumes reports Iops for gp2 too: its baseline, 3 IOPS per GiB (EBS User Guide, "Amazon
// EBS volume types"). So a volume's recorded settings are passed on only where its type takes them.

const TAKES_IOPS: ReadonlySet<string> = new Set(['io1', 'io2', 'gp3'])
const TAKES_THROUGHPUT: ReadonlySet<string> = new Set(['gp3'])

export interface Performance {
  iops?: number
  throughput?: number
}

/** Of `recorded`, what CreateVolume takes for a volume of `volumeType`. */
export function provisionable(volumeType: string, recorded: { iops?: number | undefined; throughput?: number | undefined }): Performance {
  return {
    ...(recorded.iops && TAKES_IOPS.has(volumeType) ? { iops: recorded.iops } : {}),
    ...(recorded.throughput && TAKES_THROUGHPUT.has(volumeType) ? { throughput: recorded.throughput } : {}),
  }
}

/** The same as CreateVolume's parameters (Iops, Throughput). */
export function createVolumePerformance(volumeType: string, recorded: { iops?: number | undefined; throughput?: number | undefined }): { Iops?: number; Throughput?: number } {
  const p = provisionable(volumeType, recorded)
  return { ...(p.iops ? { Iops: p.iops } : {}), ...(p.throughput ? { Throughput: p.throughput } : {}) }
}
