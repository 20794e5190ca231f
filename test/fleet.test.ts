// The fleet's CloudFormation template (packaging/cloudformation/fleet.yaml): it parses (with the
// short-form intrinsic tags), every Ref, GetAtt, Sub placeholder, condition and DependsOn
// resolves, the instance role's policy is packaging/iam/worker-policy.json and allows every AWS
// call the agent's code makes (and little else), the dashboard is packaging/dashboard.json, the
// user-data hands user-data.sh every setting it requires, and the alarms watch the metrics the
// agent emits. cfn-lint, when the machine has it, checks the resource schemas too.
import t from 'tap'
import { execFile } from 'node:child_process'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { parse, type Tags } from 'yaml'
import { HEARTBEAT_SECONDS, maintenanceMetrics, NAMESPACE, taskEndMetrics } from '../agent/daemon/metrics.ts'
import { parseTask } from '../agent/daemon/task.ts'
import { ROOT, tempDir } from './helpers.ts'

const run = promisify(execFile)
const TEMPLATE = join(ROOT, 'packaging/cloudformation/fleet.yaml')
const PSEUDO = new Set(['AWS::AccountId', 'AWS::NotificationARNs', 'AWS::NoValue', 'AWS::Partition', 'AWS::Region', 'AWS::StackId', 'AWS::StackName', 'AWS::URLSuffix'])

/** CloudFormation's short forms (!Ref, !Sub, …) as the long forms they stand for. */
const FUNCTIONS = ['Base64', 'Cidr', 'FindInMap', 'GetAtt', 'GetAZs', 'ImportValue', 'Join', 'Select', 'Split', 'Sub', 'And', 'Equals', 'If', 'Not', 'Or']
const longForm = (name: string, value: unknown): Record<string, unknown> =>
  name === 'Ref' || name === 'Condition' ? { [name]: value }
    : name === 'GetAtt' && typeof value === 'string' ? { 'Fn::GetAtt': value.split(/\.(.*)/s).slice(0, 2) }
    : { [`Fn::${name}`]: value }
const cfnTags: Tags = [...FUNCTIONS, 'Ref', 'Condition'].flatMap((name) => [
  { tag: `!${name}`, resolve: (value: string) => longForm(name, value) },
  { tag: `!${name}`, collection: 'seq' as const, resolve: (seq: { toJSON(): unknown }) => longForm(name, seq.toJSON()) },
  { tag: `!${name}`, collection: 'map' as const, resolve: (map: { toJSON(): unknown }) => longForm(name, map.toJSON()) },
]) as Tags

type Template = { Parameters: Record<string, any>; Conditions?: Record<string, any>; Resources: Record<string, any>; Outputs?: Record<string, any> }
const parseTemplate = (text: string): Template => parse(text, { customTags: cfnTags }) as Template
const tpl = parseTemplate(await readFile(TEMPLATE, 'utf8'))

/** Every reference in the template that names nothing. */
function unresolved(tpl: Template): string[] {
  const params = new Set(Object.keys(tpl.Parameters ?? {}))
  const resources = new Set(Object.keys(tpl.Resources))
  const conditions = new Set(Object.keys(tpl.Conditions ?? {}))
  const bad: string[] = []
  const name = (n: string, where: string, vars: Set<string> = new Set()): void => {
    if (n.includes('.')) {
      if (!resources.has(n.split('.')[0]!)) bad.push(`${where}: \${${n}} names no resource`)
    } else if (!params.has(n) && !resources.has(n) && !PSEUDO.has(n) && !vars.has(n)) bad.push(`${where}: ${n} is not a parameter, resource or pseudo parameter`)
  }
  const walk = (node: unknown, where: string): void => {
    if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${where}[${i}]`))
    if (node === null || typeof node !== 'object') return
    const o = node as Record<string, unknown>
    const keys = Object.keys(o)
    if (keys.length === 1 && keys[0] === 'Ref') return name(String(o.Ref), where)
    if (keys.length === 1 && keys[0] === 'Fn::GetAtt') {
      const [res] = o['Fn::GetAtt'] as string[]
      if (!resources.has(res!)) bad.push(`${where}: GetAtt of ${res}, no such resource`)
      return
    }
    if (keys.length === 1 && keys[0] === 'Fn::Sub') {
      const v = o['Fn::Sub']
      const [text, vars] = Array.isArray(v) ? [String(v[0]), (v[1] ?? {}) as Record<string, unknown>] : [String(v), {}]
      for (const m of text.matchAll(/\$\{([^}]*)\}/g)) if (!m[1]!.startsWith('!')) name(m[1]!, where, new Set(Object.keys(vars)))
      return walk(vars, where)
    }
    if (keys.length === 1 && keys[0] === 'Fn::If') {
      const [cond, ...rest] = o['Fn::If'] as unknown[]
      if (!conditions.has(String(cond))) bad.push(`${where}: condition ${String(cond)} is not defined`)
      return walk(rest, where)
    }
    if (keys.length === 1 && keys[0] === 'Condition' && typeof o.Condition === 'string') {
      if (!conditions.has(o.Condition)) bad.push(`${where}: condition ${o.Condition} is not defined`)
      return
    }
    for (const [k, v] of Object.entries(o)) walk(v, `${where}.${k}`)
  }
  for (const [id, r] of Object.entries(tpl.Resources)) {
    if (!/^AWS::\w+::\w+$/.test(r.Type)) bad.push(`${id}: type ${r.Type}`)
    if (r.Condition && !conditions.has(r.Condition)) bad.push(`${id}: condition ${r.Condition} is not defined`)
    for (const d of [r.DependsOn ?? []].flat()) if (!resources.has(d)) bad.push(`${id}: DependsOn ${d}, no such resource`)
    walk(r.Properties, `${id}.Properties`)
    walk(r.UpdatePolicy, `${id}.UpdatePolicy`)
    walk(r.CreationPolicy, `${id}.CreationPolicy`)
  }
  walk(tpl.Conditions, 'Conditions')
  walk(tpl.Outputs, 'Outputs')
  return bad
}

/** The template's form of a value back to the file's: !Sub "x" -> "x", !Ref P -> "${P}". */
function unsub(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(unsub)
  if (node === null || typeof node !== 'object') return node
  const o = node as Record<string, unknown>
  if (Object.keys(o).length === 1 && typeof o['Fn::Sub'] === 'string') return o['Fn::Sub']
  if (Object.keys(o).length === 1 && typeof o.Ref === 'string') return `\${${o.Ref}}`
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, unsub(v)]))
}

t.test('every reference resolves', async (t) => {
  t.same(unresolved(tpl), [], 'no dangling Ref, GetAtt, Sub placeholder, condition or DependsOn')
  for (const r of ['TaskQueue', 'TaskDeadLetterQueue', 'ReplyQueue', 'WorkerLaunchTemplate', 'WorkerInstanceProfile', 'WorkerGroup', 'BacklogScaling', 'DeadLetterAlarm', 'MissingHeartbeatAlarm', 'Dashboard',
    'PruneScheduleRule', 'CheckScheduleRule', 'TaskQueuePolicy', 'RepositoryDamageAlarm', 'MaintenanceFailedAlarm',
    'OldestTaskAgeAlarm', 'TaskFailureRateAlarm', 'S3GatewayEndpoint', 'EndpointSecurityGroup']) {
    t.ok(tpl.Resources[r], `${r} is there`)
  }
  // The check itself can fail: a template with a typo in each kind of reference.
  const broken = parseTemplate((await readFile(TEMPLATE, 'utf8'))
    .replace('!GetAtt TaskDeadLetterQueue.Arn', '!GetAtt TaskDeadLeterQueue.Arn')
    .replace("export EBS_WORKER_FLEET='${AWS::StackName}'", "export EBS_WORKER_FLEET='${StackNam}'")
    .replace('Roles: [!Ref WorkerRole]', 'Roles: [!Ref WorkerRol]'))
  t.equal(unresolved(broken).length, 3, `typos are caught: ${unresolved(broken).join('; ')}`)
})

t.test('the task queue redrives into the dead-letter queue', async (t) => {
  const q = tpl.Resources.TaskQueue.Properties
  t.same(q.RedrivePolicy, { deadLetterTargetArn: { 'Fn::GetAtt': ['TaskDeadLetterQueue', 'Arn'] }, maxReceiveCount: { Ref: 'MaxReceiveCount' } })
  t.same(q.VisibilityTimeout, { Ref: 'VisibilityTimeoutSeconds' })
})

t.test('the instance role carries packaging/iam/worker-policy.json, unchanged', async (t) => {
  const file = JSON.parse(await readFile(join(ROOT, 'packaging/iam/worker-policy.json'), 'utf8'))
  const role = tpl.Resources.WorkerRole.Properties
  const embedded = role.Policies.find((p: any) => p.PolicyName === 'ebs-worker').PolicyDocument
  t.same(unsub(embedded), file, 'same statements, actions, resources and conditions')
  t.same(tpl.Resources.WorkerInstanceProfile.Properties.Roles, [{ Ref: 'WorkerRole' }])
  t.same(tpl.Resources.WorkerLaunchTemplate.Properties.LaunchTemplateData.IamInstanceProfile, { Arn: { 'Fn::GetAtt': ['WorkerInstanceProfile', 'Arn'] } })
})

/** The IAM actions the agent's code calls, from its AWS SDK imports. */
async function actionsInCode(): Promise<Map<string, string>> {
  const S3: Record<string, string[]> = {
    GetObject: ['s3:GetObject'], HeadObject: ['s3:GetObject'], PutObject: ['s3:PutObject'], DeleteObject: ['s3:DeleteObject'],
    ListObjectsV2: ['s3:ListBucket'], Upload: ['s3:PutObject', 's3:AbortMultipartUpload'],
    ListObjectVersions: ['s3:ListBucketVersions'], GetObjectLockConfiguration: ['s3:GetBucketObjectLockConfiguration'],
    GetObjectRetention: ['s3:GetObjectRetention'], PutObjectRetention: ['s3:PutObjectRetention'],
  }
  const WAITERS: Record<string, string> = { VolumeInUse: 'DescribeVolumes', VolumeAvailable: 'DescribeVolumes', VolumeDeleted: 'DescribeVolumes', SnapshotCompleted: 'DescribeSnapshots' }
  const needed = new Map<string, string>()
  const files = (await readdir(join(ROOT, 'agent'), { recursive: true })).filter((f) => f.endsWith('.ts'))
  for (const f of files) {
    const text = await readFile(join(ROOT, 'agent', f), 'utf8')
    for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*'@aws-sdk\/(client-[a-z0-9-]+|lib-storage)'/g)) {
      const sdkName = m[2] === 'lib-storage' ? 's3' : m[2]!.slice('client-'.length)
      // The SDK's package names and IAM's service prefixes differ for some services.
      const service = ({ 'auto-scaling': 'autoscaling' } as Record<string, string>)[sdkName] ?? sdkName
      for (const raw of m[1]!.split(',')) {
        const id = raw.trim().replace(/^type\s+/, '').split(/\s+as\s+/)[0]!
        const op = /^(\w+)Command$/.exec(id)?.[1] ?? /^paginate(\w+)$/.exec(id)?.[1] ?? (id === 'Upload' ? 'Upload' : undefined)
        const waiter = /^waitUntil(\w+)$/.exec(id)?.[1]
        const action = op ?? (waiter ? WAITERS[waiter] ?? `unknown waiter ${waiter}` : undefined)
        if (!action) continue
        for (const a of service === 's3' ? S3[action] ?? [`s3:unmapped ${action}`] : [`${service}:${action}`]) needed.set(a, f)
      }
    }
  }
  return needed
}

const grants = (pattern: string, action: string): boolean =>
  new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`, 'i').test(action)

t.test('the policy allows every AWS call in the agent, and grants little else', async (t) => {
  const file = JSON.parse(await readFile(join(ROOT, 'packaging/iam/worker-policy.json'), 'utf8'))
  const allowed: string[] = file.Statement.filter((s: any) => s.Effect === 'Allow').flatMap((s: any) => [s.Action].flat())
  // Plain Allow statements, and two Denies, whatever else the role is given: nothing it runs may
  // lift an S3 Object Lock (test/object-lock.test.ts checks what lock upkeep needs), nor write or
  // delete the repository's keys (test/iam-narrowed.test.ts).
  const denied = file.Statement.filter((s: any) => s.Effect !== 'Allow')
  t.same(denied, [
    { Sid: 'NeverBypassObjectLock', Effect: 'Deny', Action: 's3:BypassGovernanceRetention', Resource: '*' },
    { Sid: 'NeverWriteTheKeys', Effect: 'Deny', Action: ['s3:PutObject', 's3:DeleteObject'], Resource: 'arn:${AWS::Partition}:s3:::${RepositoryBucket}/${RepositoryPrefix}/keys/*' },
  ], 'two Denies: s3:BypassGovernanceRetention, and writing or deleting keys/')
  t.ok(file.Statement.every((s: any) => !s.NotAction && !s.NotResource), 'plain statements')
  t.notOk(allowed.some((a) => a === '*' || a.endsWith(':*')), 'no service-wide wildcard')
  const needed = await actionsInCode()
  t.ok(needed.has('ec2:CreateVolume') && needed.has('sqs:ReceiveMessage') && needed.has('s3:PutObject'), `the scan finds the calls (${[...needed.keys()].join(', ')})`)
  // A call the code makes itself needs a statement that does not limit it to resource creation.
  const direct = file.Statement.filter((s: any) => !JSON.stringify(s.Condition ?? {}).includes('ec2:CreateAction'))
  // Calls in the agent's code that only an operator's command makes, never the worker.
  const operatorOnly: Record<string, string> = { 'kms:Encrypt': 'ebs-worker init --kms-key wraps a new repository key' }
  for (const [action, where] of needed) {
    if (action in operatorOnly) continue
    t.ok(direct.some((s: any) => [s.Action].flat().some((p: string) => grants(p, action))), `${action} (agent/${where}) is allowed`)
  }
  t.notOk(allowed.some((a) => a in operatorOnly), `the worker cannot do what only operators need (${Object.keys(operatorOnly).join(', ')})`)
  // Granted without a direct call, and why.
  const indirect: Record<string, string> = {
    'ec2:CreateTags': 'TagSpecifications on CreateVolume and CreateSnapshot (and CreateTags on its own volumes)',
    'cloudformation:SignalResource': 'the user-data signals the group\'s CreationPolicy and UpdatePolicy (packaging/user-data.sh)',
    'kms:Decrypt': 'EBS uses the key on the caller\'s behalf for encrypted volumes',
    'kms:GenerateDataKeyWithoutPlaintext': 'same', 'kms:ReEncryptFrom': 'same', 'kms:ReEncryptTo': 'same', 'kms:CreateGrant': 'same, for AWS resources only',
    's3:DeleteObjectVersion': 'DeleteObject with a VersionId: prune deletes older versions once their Object Lock has run out',
    's3:PutObjectRetention': 'also PutObject with a retain-until date (a repository under Object Lock)',
  }
  for (const a of allowed) t.ok(needed.has(a) || a in indirect, `${a} is needed (${needed.get(a) ?? indirect[a] ?? 'by nothing'})`)
  const sensitive = file.Statement.filter((s: any) => [s.Action].flat().some((a: string) => ['ec2:DeleteVolume', 'ec2:DetachVolume', 'ec2:ModifySnapshotAttribute', 'ec2:CreateTags'].includes(a)))
  t.ok(sensitive.every((s: any) => s.Condition), 'deleting, detaching, sharing and tagging are limited by tag conditions')
})

t.test("worker-policy.json grants whatever the stand-in flows' worker statements grant", async (t) => {
  // packaging/iam/worker-ebs-statements.json is what test/controller.test.ts enforces in the
  // stand-ins (plain, without CloudFormation substitutions); the deployable policy must cover it.
  const policy = JSON.parse(await readFile(join(ROOT, 'packaging/iam/worker-policy.json'), 'utf8'))
  const statements = JSON.parse(await readFile(join(ROOT, 'packaging/iam/worker-ebs-statements.json'), 'utf8'))
  const allowed: string[] = policy.Statement.flatMap((s: any) => [s.Action].flat())
  const wanted: string[] = statements.Statement.flatMap((s: any) => [s.Action].flat())
  for (const pattern of wanted) {
    const actions = pattern.endsWith('*') ? allowed.filter((a) => grants(pattern, a)) : [pattern]
    t.ok(actions.length > 0 && actions.every((a) => allowed.some((p) => grants(p, a))), `${pattern} is in worker-policy.json`)
  }
})

t.test('the dashboard is packaging/dashboard.json', async (t) => {
  const body = tpl.Resources.Dashboard.Properties.DashboardBody['Fn::Sub']
  t.same(JSON.parse(body), JSON.parse(await readFile(join(ROOT, 'packaging/dashboard.json'), 'utf8')))
  const metrics = JSON.stringify(JSON.parse(body))
  for (const m of ['BytesRead', 'BytesStored', 'Throughput', 'TaskDuration', 'Tasks', 'TasksRunning', 'QueueWait', 'Heartbeat',
    'PruneBytesReclaimed', 'PrunePacksDeleted', 'PrunePacksRepacked', 'PruneDuration', 'CheckProblems']) {
    t.match(metrics, new RegExp(`"${NAMESPACE}","${m}"|MetricName=\\\\"${m}\\\\"`), `it shows ${m}`)
  }
})

t.test('the user-data gives user-data.sh what it requires, from the stack', async (t) => {
  const script = tpl.Resources.WorkerLaunchTemplate.Properties.LaunchTemplateData.UserData['Fn::Base64']['Fn::Sub'] as string
  t.match(script, /^#!\/bin\/bash\n/)
  t.match(script, /^exec \/opt\/ebs-worker\/share\/user-data\.sh$/m, 'runs the script the release installs (share/user-data.sh)')
  const userData = await readFile(join(ROOT, 'packaging/user-data.sh'), 'utf8')
  const required = [...userData.matchAll(/^(\w+)=\$\(setting "\$\{(EBS_WORKER_\w+):-\}" [\w:-]+ ""\)$/gm)].map((m) => m[2]!)
  t.same(required.sort(), ['EBS_WORKER_QUEUE_URL', 'EBS_WORKER_REPLY_QUEUE_URL', 'EBS_WORKER_REPOSITORY', 'EBS_WORKER_KEY_FILE', 'EBS_WORKER_ASG_NAME', 'EBS_WORKER_LIFECYCLE_HOOK'].sort(),
    'the settings without a default (the key file and the group\'s are optional; the stack sets the group\'s)')
  for (const v of required.filter((v) => v !== 'EBS_WORKER_KEY_FILE')) t.match(script, new RegExp(`^export ${v}='[^']+'$`, 'm'), `${v} set`)
  t.match(script, /^export EBS_WORKER_FLEET='\$\{AWS::StackName\}'$/m, 'the fleet name the alarms and dashboard use')
  const md = tpl.Resources.WorkerLaunchTemplate.Properties.LaunchTemplateData.MetadataOptions
  t.same(md, { HttpEndpoint: 'enabled', HttpTokens: 'required', HttpPutResponseHopLimit: 1, InstanceMetadataTags: 'enabled' }, 'IMDSv2 only, tags readable')
})

t.test('alarms watch the dead-letter queue and the agent\'s heartbeat', async (t) => {
  const dlq = tpl.Resources.DeadLetterAlarm.Properties
  t.same(dlq.Dimensions, [{ Name: 'QueueName', Value: { 'Fn::GetAtt': ['TaskDeadLetterQueue', 'QueueName'] } }])
  t.match(dlq, { MetricName: 'ApproximateNumberOfMessagesVisible', Threshold: 0, ComparisonOperator: 'GreaterThanThreshold' })
  const hb = tpl.Resources.MissingHeartbeatAlarm.Properties
  const beats = hb.Metrics.find((m: any) => m.Id === 'beats').MetricStat
  t.match(beats.Metric, { Namespace: NAMESPACE, MetricName: 'Heartbeat', Dimensions: [{ Name: 'Fleet', Value: { Ref: 'AWS::StackName' } }] })
  const expected = beats.Period / HEARTBEAT_SECONDS
  t.match(hb.Metrics.find((m: any) => m.ReturnData).Expression, new RegExp(`\\(workers \\* ${expected}\\)`), `${expected} heartbeats per worker per period`)
  t.equal(hb.TreatMissingData, 'breaching', 'no data at all is an alarm')
})

/** A condition's value for these parameter values (Fn::Or, And, Not, Equals over Refs and literals). */
function evaluate(node: any, params: Record<string, unknown>, conditions: Record<string, any>): unknown {
  if (node === null || typeof node !== 'object') return node
  if ('Ref' in node) return String(params[node.Ref])
  if ('Condition' in node) return evaluate(conditions[node.Condition], params, conditions)
  if ('Fn::Equals' in node) return String(evaluate(node['Fn::Equals'][0], params, conditions)) === String(evaluate(node['Fn::Equals'][1], params, conditions))
  if ('Fn::Not' in node) return !evaluate(node['Fn::Not'][0], params, conditions)
  if ('Fn::Or' in node) return node['Fn::Or'].some((c: unknown) => evaluate(c, params, conditions))
  if ('Fn::And' in node) return node['Fn::And'].every((c: unknown) => evaluate(c, params, conditions))
  throw new Error(`cannot evaluate ${JSON.stringify(node)}`)
}

/**
 * What EventBridge sends to the queue for a rule's target, for these parameters (defaults for the
 * others) and a scheduled event at `time`: Fn::If chosen, Fn::Sub filled in, then the input
 * transformer's <time> (a string in quotes: inserted as it is).
 */
function sentBody(template: Template, rule: string, params: Record<string, unknown>, time: string): string {
  const values: Record<string, unknown> = { 'AWS::StackName': 'ebs-fleet', ...Object.fromEntries(Object.entries(template.Parameters).map(([k, p]) => [k, p.Default])), ...params }
  const target = template.Resources[rule].Properties.Targets[0]
  const resolve = (node: any): string => {
    if ('Fn::If' in node) {
      const [cond, yes, no] = node['Fn::If']
      return resolve(evaluate(template.Conditions![cond], values, template.Conditions!) ? yes : no)
    }
    return String(node['Fn::Sub']).replace(/\$\{([^}]+)\}/g, (_, name: string) => {
      if (!(name in values)) throw new Error(`\${${name}} has no value`)
      return String(values[name])
    })
  }
  const paths = target.InputTransformer.InputPathsMap as Record<string, string>
  let body = resolve(target.InputTransformer.InputTemplate)
  for (const [name, path] of Object.entries(paths)) {
    if (path !== '$.time') throw new Error(`only the event's time is used, not ${path}`)
    body = body.replaceAll(`<${name}>`, time)
  }
  return body
}

t.test('the maintenance schedule sends valid prune and check tasks for the fleet\'s repository to the task queue', async (t) => {
  const time = '2026-11-23T05:00:00Z'
  const repository = 's3://my-bucket/backups'
  const params = { RepositoryBucket: 'my-bucket' }
  for (const [rule, schedule] of [['PruneScheduleRule', 'PruneSchedule'], ['CheckScheduleRule', 'CheckSchedule']] as const) {
    const r = tpl.Resources[rule].Properties
    t.same(r.ScheduleExpression, { Ref: schedule }, `${rule} runs on ${schedule}`)
    t.match(tpl.Parameters[schedule].Default, /^cron\(\d+ \d+ \* \* \? \*\)$/, 'daily by default')
    t.same(r.State, { 'Fn::If': ['MaintenanceEnabled', 'ENABLED', 'DISABLED'] }, 'switched off by the Maintenance parameter')
    t.same(tpl.Conditions!.MaintenanceEnabled, { 'Fn::Equals': [{ Ref: 'Maintenance' }, 'enabled'] })
    t.equal(r.Targets.length, 1)
    t.same(r.Targets[0].Arn, { 'Fn::GetAtt': ['TaskQueue', 'Arn'] }, 'its target is the task queue')
    t.equal(r.Targets[0].RoleArn, undefined, 'with no role (an SQS target is allowed by the queue policy)')
  }
  const bare = parseTask(sentBody(tpl, 'PruneScheduleRule', params, time))
  t.ok(bare.ok, `the default prune task is valid ${bare.ok ? '' : bare.reason}`)
  t.match(bare.ok && bare.task, { type: 'prune', taskId: `maintenance/prune/${time}`, repository, maxUnusedPercent: 5 }, 'a prune of the fleet\'s repository, named by the day')
  t.equal(bare.ok && bare.task.type === 'prune' && bare.task.forget, undefined, 'by default it forgets nothing (ebs-controller forget owns retention)')
  const withPolicy = parseTask(sentBody(tpl, 'PruneScheduleRule', { ...params, KeepDaily: 7, KeepWeekly: 5, KeepMonthly: -1 }, time))
  t.ok(withPolicy.ok, `with a retention the prune task is valid ${withPolicy.ok ? '' : withPolicy.reason}`)
  t.match(withPolicy.ok && withPolicy.task, { forget: { keepDaily: 7, keepWeekly: 5, keepMonthly: -1, groupBy: 'volume' } }, 'and forgets by it first')
  const weekly = parseTask(sentBody(tpl, 'PruneScheduleRule', { ...params, KeepWeekly: 8 }, time))
  t.match(weekly.ok && weekly.task, { forget: { keepDaily: 0, keepWeekly: 8, keepMonthly: 0 } }, 'one rule is enough')
  const check = parseTask(sentBody(tpl, 'CheckScheduleRule', { ...params, CheckReadDataDays: 30 }, time))
  t.ok(check.ok, `the check task is valid ${check.ok ? '' : check.reason}`)
  t.match(check.ok && check.task, { type: 'check', taskId: `maintenance/check/${time}`, repository, readDataSubset: 'daily/30' }, 'a check reading a thirtieth of the packs a day')
  // The check can fail: a typo in the input template.
  const typo = parseTemplate((await readFile(TEMPLATE, 'utf8')).replace('"type": "check"', '"type": "chekc"'))
  t.notOk(parseTask(sentBody(typo, 'CheckScheduleRule', params, time)).ok, 'a task the workers would reject is caught')

  const policy = tpl.Resources.TaskQueuePolicy.Properties
  t.same(policy.Queues, [{ Ref: 'TaskQueue' }])
  t.same(policy.PolicyDocument.Statement, [{
    Sid: 'ScheduledMaintenance', Effect: 'Allow', Principal: { Service: 'events.amazonaws.com' }, Action: 'sqs:SendMessage',
    Resource: { 'Fn::GetAtt': ['TaskQueue', 'Arn'] },
    Condition: { ArnEquals: { 'aws:SourceArn': [{ 'Fn::GetAtt': ['PruneScheduleRule', 'Arn'] }, { 'Fn::GetAtt': ['CheckScheduleRule', 'Arn'] }] } },
  }], 'EventBridge may send to the task queue, for these two rules only')
})

t.test('alarms watch the repository check\'s damage and failed maintenance, as the agent emits them', async (t) => {
  const times = { startedAt: '2026-11-23T05:00:00.000Z', finishedAt: '2026-11-23T05:01:00.000Z' }
  const check = maintenanceMetrics('ebs-fleet', 'i-1', { taskId: 'c', type: 'check', status: 'succeeded', ...times, result: { damage: 2 } })!
  const emitted = check._aws.CloudWatchMetrics[0]!
  const damage = tpl.Resources.RepositoryDamageAlarm.Properties
  t.match(damage, { Namespace: NAMESPACE, MetricName: 'CheckProblems', Threshold: 0, ComparisonOperator: 'GreaterThanThreshold' })
  t.ok(emitted.Metrics.some((m) => m.Name === damage.MetricName), 'a metric a check task emits')
  t.same(damage.Dimensions.map((d: { Name: string }) => d.Name), emitted.Dimensions[0], 'under the dimensions it is emitted with')
  t.same(damage.Dimensions, [{ Name: 'Fleet', Value: { Ref: 'AWS::StackName' } }])
  t.equal(damage.TreatMissingData, 'ignore', 'between checks the alarm keeps its state: damage stays in alarm until a check finds none')
  const failed = tpl.Resources.MaintenanceFailedAlarm.Properties
  const end = taskEndMetrics('ebs-fleet', 'i-1', { taskId: 'p', type: 'prune', status: 'failed', errorCode: 'STORAGE_ERROR', ...times })
  const sets = end._aws.CloudWatchMetrics[0]!.Dimensions.map((s) => [...s].sort().join())
  for (const [id, type] of [['prunes', 'prune'], ['checks', 'check']]) {
    const stat = failed.Metrics.find((m: any) => m.Id === id).MetricStat
    t.match(stat.Metric, { Namespace: NAMESPACE, MetricName: 'Tasks' }, `${id}: the Tasks metric`)
    t.same(Object.fromEntries(stat.Metric.Dimensions.map((d: any) => [d.Name, d.Value])), { Fleet: { Ref: 'AWS::StackName' }, TaskType: type, Outcome: 'failed' }, `of failed ${type} tasks`)
    t.ok(sets.includes(stat.Metric.Dimensions.map((d: any) => d.Name).sort().join()), 'a dimension set the daemon emits')
  }
  t.match(failed.Metrics.find((m: any) => m.ReturnData).Expression, /FILL\(prunes, 0\) \+ FILL\(checks, 0\)/)
  for (const a of ['RepositoryDamageAlarm', 'MaintenanceFailedAlarm']) t.same(tpl.Resources[a].Properties.AlarmActions, [{ Ref: 'AlarmTopic' }], `${a} notifies`)
})

const cfnLint = await run('cfn-lint', ['--version']).then(() => true, () => false)
t.test('cfn-lint finds nothing (resource schemas, properties, types)', { skip: cfnLint ? false : 'cfn-lint is not on this machine' }, async (t) => {
  const r = await run('cfn-lint', [TEMPLATE]).then(() => ({ ok: true, out: '' }), (e: { stdout: string }) => ({ ok: false, out: e.stdout }))
  t.ok(r.ok, r.out)
  const dir = await tempDir(t, 'cfn-lint')
  const broken = join(dir, 'broken.yaml')
  await writeFile(broken, (await readFile(TEMPLATE, 'utf8')).replace('HttpTokens: required', 'HttpTokens: sometimes'))
  const b = await run('cfn-lint', [broken]).then(() => ({ ok: true, out: '' }), (e: { stdout: string }) => ({ ok: false, out: e.stdout }))
  t.notOk(b.ok, 'and it does find a bad value')
  t.match(b.out, /sometimes/)
})

t.test('either architecture: the instance type follows it unless one is given', async (t) => {
  t.same(tpl.Parameters.Architecture.AllowedValues, ['x86_64', 'arm64'])
  t.same(tpl.Conditions!.IsArm, { 'Fn::Equals': [{ Ref: 'Architecture' }, 'arm64'] })
  t.same(tpl.Resources.WorkerLaunchTemplate.Properties.LaunchTemplateData.InstanceType,
    { 'Fn::If': ['HasInstanceType', { Ref: 'InstanceType' }, { 'Fn::If': ['IsArm', 'c7g.large', 'c6i.large'] }] }, 'Graviton (c7g) for arm64, c6i for x86_64')
})

t.test('endpoints: S3 through a gateway endpoint, the APIs the workers call through optional interface endpoints', async (t) => {
  const s3 = tpl.Resources.S3GatewayEndpoint
  t.match(s3, { Type: 'AWS::EC2::VPCEndpoint', Condition: 'HasRouteTables', Properties: { VpcEndpointType: 'Gateway', RouteTableIds: { Ref: 'RouteTableIds' } } })
  t.same(s3.Properties.ServiceName, { 'Fn::Sub': 'com.amazonaws.${AWS::Region}.s3' })
  const interfaces = Object.values(tpl.Resources).filter((r: any) => r.Type === 'AWS::EC2::VPCEndpoint' && r.Properties.VpcEndpointType === 'Interface')
  const services = interfaces.map((r: any) => /com\.amazonaws\.\$\{AWS::Region\}\.([\w-]+)$/.exec(r.Properties.ServiceName['Fn::Sub'])?.[1])
  // Every service the agent's code calls (but S3), the CloudWatch agent's, the signal's and Session Manager's.
  const called = new Set([...(await actionsInCode()).keys()].map((a) => a.split(':')[0]!).filter((svc) => svc !== 's3'))
  for (const svc of [...called, 'logs', 'monitoring', 'cloudformation', 'ssm', 'ssmmessages', 'ec2messages']) t.ok(services.includes(svc), `an interface endpoint for ${svc}`)
  for (const r of interfaces as any[]) {
    t.match(r, { Condition: 'CreateInterfaceEndpoints', Properties: { PrivateDnsEnabled: true, SubnetIds: { Ref: 'SubnetIds' }, SecurityGroupIds: [{ Ref: 'EndpointSecurityGroup' }] } })
  }
  const ingress = tpl.Resources.EndpointSecurityGroup.Properties.SecurityGroupIngress
  t.same(ingress.map((r: any) => [r.IpProtocol, r.FromPort, r.ToPort, r.SourceSecurityGroupId]), [['tcp', 443, 443, { Ref: 'WorkerSecurityGroup' }]], 'endpoints take HTTPS from the workers only')
})

t.test('egress: HTTPS only; with endpoints and the S3 prefix list, to them alone', async (t) => {
  const egress = tpl.Resources.WorkerSecurityGroup.Properties.SecurityGroupEgress['Fn::If']
  t.equal(egress[0], 'RestrictEgress')
  t.same(tpl.Conditions!.RestrictEgress, { 'Fn::And': [{ Condition: 'CreateInterfaceEndpoints' }, { 'Fn::Not': [{ 'Fn::Equals': [{ Ref: 'S3PrefixListId' }, ''] }] }] })
  const restricted = [...egress[1], tpl.Resources.WorkerToEndpointsEgress.Properties]
  t.same(restricted.map((r: any) => [r.IpProtocol, r.FromPort, r.ToPort, r.DestinationPrefixListId ?? r.DestinationSecurityGroupId ?? r.CidrIp]),
    [['tcp', 443, 443, { Ref: 'S3PrefixListId' }], ['tcp', 443, 443, { Ref: 'EndpointSecurityGroup' }]], 'S3 (gateway) and the interface endpoints, nothing else')
  t.equal(tpl.Resources.WorkerToEndpointsEgress.Condition, 'RestrictEgress')
  t.same(egress[2].map((r: any) => [r.IpProtocol, r.FromPort, r.CidrIp]), [['tcp', 443, '0.0.0.0/0']], 'otherwise HTTPS anywhere (through a NAT)')
})

t.test('health, rollout and scale-in: the group, the user-data and the worker policy agree', async (t) => {
  const group = tpl.Resources.WorkerGroup
  const script = tpl.Resources.WorkerLaunchTemplate.Properties.LaunchTemplateData.UserData['Fn::Base64']['Fn::Sub'] as string
  const exported = (name: string) => new RegExp(`^export ${name}='([^']*)'$`, 'm').exec(script)?.[1]
  t.same(group.Properties.AutoScalingGroupName, { 'Fn::Sub': exported('EBS_WORKER_ASG_NAME') }, 'the daemon is told its group\'s name')
  const hook = group.Properties.LifecycleHookSpecificationList
  t.same(hook, [{ LifecycleHookName: exported('EBS_WORKER_LIFECYCLE_HOOK'), LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: { Ref: 'LifecycleHookTimeoutSeconds' }, DefaultResult: 'CONTINUE' }],
    'a termination hook the daemon completes once drained')
  t.equal(exported('EBS_WORKER_CFN_RESOURCE'), 'WorkerGroup', 'the user-data signals the group')
  t.equal(exported('EBS_WORKER_CFN_STACK'), '${AWS::StackName}')
  t.match(group.CreationPolicy, { ResourceSignal: { Count: { Ref: 'MinSize' } }, AutoScalingCreationPolicy: { MinSuccessfulInstancesPercent: 100 } })
  t.match(group.UpdatePolicy.AutoScalingRollingUpdate, { MaxBatchSize: 1, WaitOnResourceSignals: true, MinSuccessfulInstancesPercent: 100 },
    'one worker at a time, each must signal: a broken AMI stops at the first')
  t.ok(group.UpdatePolicy.AutoScalingRollingUpdate.SuspendProcesses.includes('ReplaceUnhealthy'))
  // The worker policy allows exactly this group's calls and this stack's signal.
  const policy = tpl.Resources.WorkerRole.Properties.Policies[0].PolicyDocument.Statement
  const asg = policy.find((s: any) => s.Sid === 'OwnGroupLifecycleAndHealth')
  t.match(asg.Resource['Fn::Sub'], new RegExp(`:autoScalingGroup:\\*:autoScalingGroupName/${exported('EBS_WORKER_ASG_NAME')!.replace(/[${}:]/g, '\\$&')}$`))
  t.same(asg.Condition, { StringEquals: { 'aws:ResourceTag/ebs-worker:fleet': { 'Fn::Sub': '${AWS::StackName}' } } })
  t.same(policy.find((s: any) => s.Sid === 'SignalOwnStack').Resource, { 'Fn::Sub': '${AWS::StackId}' }, 'only its own stack')
  t.equal(group.Properties.HealthCheckGracePeriod, 300, 'the boot is covered (health-check respects the grace period)')
})

t.test('alarms on the oldest task\'s age and on the failure rate, from metrics the agent emits', async (t) => {
  const age = tpl.Resources.OldestTaskAgeAlarm.Properties
  t.match(age, { Namespace: 'AWS/SQS', MetricName: 'ApproximateAgeOfOldestMessage', Threshold: { Ref: 'OldestTaskAgeAlarmSeconds' }, ComparisonOperator: 'GreaterThanThreshold' })
  t.same(age.Dimensions, [{ Name: 'QueueName', Value: { 'Fn::GetAtt': ['TaskQueue', 'QueueName'] } }], 'of the task queue')
  const rate = tpl.Resources.TaskFailureRateAlarm.Properties
  t.match(rate, { Threshold: { Ref: 'FailureRateAlarmPercent' }, ComparisonOperator: 'GreaterThanThreshold', AlarmActions: [{ Ref: 'AlarmTopic' }] })
  const stats = rate.Metrics.filter((m: any) => m.MetricStat)
  t.same(stats.map((m: any) => m.MetricStat.Metric.Dimensions.find((d: any) => d.Name === 'Outcome').Value).sort(), ['failed', 'rejected', 'succeeded'])
  t.notOk(JSON.stringify(rate).includes('SEARCH'), 'no SEARCH expression (alarms cannot use them)')
  // The agent emits Tasks with exactly the dimensions the alarm names (EMF dimension sets).
  for (const outcome of ['succeeded', 'failed', 'rejected'] as const) {
    const doc = taskEndMetrics('prod', 'i-0123456789abcdef0', { taskId: 'x', type: 'backup', status: outcome, startedAt: '2026-01-01T00:00:00Z', finishedAt: '2026-01-01T00:00:01Z' })
    const sets = (doc._aws as any).CloudWatchMetrics[0].Dimensions as string[][]
    const wanted = stats[0].MetricStat.Metric.Dimensions.map((d: any) => d.Name)
    t.ok(sets.some((set) => set.length === wanted.length && wanted.every((w: string) => set.includes(w))), `Tasks by ${wanted.join('+')} is emitted (${outcome})`)
    t.equal((doc as any).Outcome, outcome)
  }
  t.equal(stats[0].MetricStat.Metric.Namespace, NAMESPACE)
  t.match(rate.Metrics.find((m: any) => m.ReturnData).Expression, /100 \* \(FILL\(failed, 0\) \+ FILL\(rejected, 0\)\)/, 'failed and rejected over all that ended')
})
