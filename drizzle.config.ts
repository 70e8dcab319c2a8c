import { defineConfig } from 'drizzle-kit';

// Only used by `npm run db:generate` (drizzle-kit generate): it reads the schema and
// writes SQL migrations to drizzle/. The service applies them itself at boot.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema.ts',
  out: './drizzle',
});
