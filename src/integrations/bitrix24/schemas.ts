import { z } from 'zod';

/**
 * Shapes of Bitrix24 answers. Every body is untrusted: it is parsed with these and
 * a mismatch becomes a ProviderError, never a TypeError deep in the client.
 */

/** `{"error":"CODE","error_description":"..."}`; the code may be empty ("Access denied."). */
export const errorBodySchema = z.object({
  error: z.string(),
  error_description: z.unknown().optional(),
});

/** Any successful REST answer: `{"result": ..., "time": {...}}` (+ `next`, `total` for lists). */
export const resultEnvelopeSchema = z.object({
  result: z.unknown(),
  next: z.union([z.number(), z.string()]).optional(),
  total: z.union([z.number(), z.string()]).optional(),
});

/** An entity id as Bitrix24 sends it: a positive integer, as a number or as a digit string. */
export const idSchema = z.union([z.number().int().positive(), z.string().regex(/^[1-9]\d{0,18}$/)]).transform((v) => String(v));

export const addResultSchema = idSchema;

export const leadRowSchema = z.object({
  ID: idSchema,
  ORIGIN_ID: z.union([z.string(), z.number()]).nullable().optional(),
});
export const leadListSchema = z.array(leadRowSchema);

/** A user reference that may be empty, 0 or null (no responsible): read as undefined then. */
const optionalUserId = z
  .union([z.number(), z.string()])
  .nullable()
  .optional()
  .transform((v) => (v !== null && v !== undefined && /^[1-9]\d{0,18}$/.test(String(v)) ? String(v) : undefined));

export const companyRowSchema = z.object({
  ID: idSchema,
  ASSIGNED_BY_ID: optionalUserId,
});
export const companyListSchema = z.array(companyRowSchema);

export const userRowSchema = z.object({ ID: idSchema });
export const userListSchema = z.array(userRowSchema);

export const updateResultSchema = z.union([z.boolean(), z.literal(1), z.literal('1')]);

/**
 * PHP encodes an empty array as `[]` and an array with keys 0..n-1 as a JSON array,
 * so `result`, `result_error`, ... of a batch are an object or an array depending on
 * what came back. Both are read as a record keyed by command name.
 */
const phpMap = z.union([z.record(z.string(), z.unknown()), z.array(z.unknown())]).transform((v): Record<string, unknown> => {
  if (!Array.isArray(v)) return v;
  const out: Record<string, unknown> = {};
  v.forEach((item, i) => {
    out[String(i)] = item;
  });
  return out;
});

export const batchResultSchema = z.object({
  result: phpMap,
  result_error: phpMap.default({}),
  result_total: phpMap.default({}),
  result_next: phpMap.default({}),
});

export const tokenAnswerSchema = z.object({
  access_token: z.string().min(1),
  refresh_token: z.string().min(1),
  expires_in: z.union([z.number(), z.string().regex(/^\d+$/)]).transform(Number).optional(),
  client_endpoint: z.url().optional(),
  member_id: z.string().optional(),
  status: z.string().optional(),
});
export type TokenAnswer = z.infer<typeof tokenAnswerSchema>;
