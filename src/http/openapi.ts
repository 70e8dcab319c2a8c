/** A short OpenAPI 3.1 description of the public routes (GET /openapi.json). */
const problem = { $ref: '#/components/schemas/Problem' };
const problemOf = (description: string) => ({ description, content: { 'application/problem+json': { schema: problem } } });
/** Answers every intake route may give besides its own (hostile input, faults, draining). */
const intakeRefusals = {
  '400': problemOf('unreadable body (not JSON, nested deeper than 32 levels)'),
  '401': problemOf('INTAKE_TOKEN is set and the request does not carry it'),
  '413': problemOf('body over 64 KB'),
  '422': problemOf('invalid fields, each named'),
  '429': problemOf('too many requests from this client address (INTAKE_RATE_LIMIT); see Retry-After'),
  '503': problemOf('the database is unreachable or the service is shutting down; nothing was stored; retry after Retry-After'),
};
const bearer = [{ bearer: [] }];

export const openApiDocument = {
  openapi: '3.1.0',
  info: { title: 'hotlead', version: '0.1.0', description: 'Speed-to-lead: intake, call results, read API.' },
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    schemas: {
      Problem: {
        type: 'object',
        properties: { type: { type: 'string' }, title: { type: 'string' }, status: { type: 'integer' }, detail: { type: 'string' }, errors: { type: 'array' } },
      },
      LeadIn: {
        type: 'object',
        required: ['phone'],
        properties: {
          name: { type: 'string', maxLength: 200 },
          phone: { oneOf: [{ type: 'string', maxLength: 64 }, { type: 'number' }] },
          city: { type: 'string' },
          timezone: { type: 'string', description: 'IANA zone; unknown zones are ignored' },
          partner: { type: 'string', description: 'utm_source' },
          ref: { type: 'string' },
          ip: { type: 'string' },
          comment: { type: 'string', maxLength: 2000 },
          extra: { type: 'object', description: 'at most 16 KB as JSON' },
        },
      },
      LeadAck: { type: 'object', properties: { id: { type: 'integer' }, state: { type: 'string' }, duplicate: { type: 'boolean' } } },
      CallResult: {
        type: 'object',
        required: ['attempt', 'token', 'outcome'],
        properties: {
          attempt: { type: 'string' },
          token: { type: 'string' },
          outcome: { enum: ['answered', 'voicemail', 'no_answer', 'busy', 'unavailable', 'invalid_number', 'failed'] },
          code: { type: ['string', 'number'] },
          reason: { type: 'string' },
          duration: { type: 'number' },
          session_id: { type: 'string' },
        },
      },
    },
  },
  paths: {
    '/v1/leads': {
      post: {
        summary: 'Submit a lead (JSON or form-encoded)',
        security: bearer,
        parameters: [{ name: 'Idempotency-Key', in: 'header', schema: { type: 'string' } }],
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/LeadIn' } } } },
        responses: {
          '201': { description: 'stored', content: { 'application/json': { schema: { $ref: '#/components/schemas/LeadAck' } } } },
          '200': { description: 'a duplicate of an active lead', content: { 'application/json': { schema: { $ref: '#/components/schemas/LeadAck' } } } },
          ...intakeRefusals,
        },
      },
      get: { summary: 'List leads', security: bearer, parameters: [{ name: 'state', in: 'query' }, { name: 'cursor', in: 'query' }, { name: 'limit', in: 'query' }], responses: { '200': { description: '{items, next_cursor}' } } },
    },
    '/v1/leads/{id}': { get: { summary: 'A lead with its timeline', security: bearer, parameters: [{ name: 'id', in: 'path', required: true }], responses: { '200': { description: 'the lead' }, '404': { description: 'no such lead' } } } },
    '/api/1/json/public/{convId}/{key}': {
      post: { summary: 'Corezoid-compatible intake for existing PHP scripts', responses: { '200': { description: '{request_proc, ops}' }, ...intakeRefusals } },
    },
    '/v1/calls/result': {
      post: {
        summary: 'Call result from the VoxEngine scenario',
        requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/CallResult' } } } },
        responses: {
          '200': { description: 'accepted (or a repeat)' },
          '403': { description: 'wrong token' },
          '404': { description: 'unknown attempt' },
          '503': problemOf('the database is unreachable; retry after Retry-After'),
        },
      },
    },
    '/healthz': { get: { summary: 'Liveness', responses: { '200': { description: 'ok' } } } },
    '/readyz': { get: { summary: 'Readiness (database reachable, not shutting down)', responses: { '200': { description: 'ready' }, '503': { description: 'database down, or draining' } } } },
    '/metrics': { get: { summary: 'Prometheus metrics', responses: { '200': { description: 'text exposition' } } } },
  },
} as const;
