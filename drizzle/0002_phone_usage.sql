CREATE TABLE "phone_usage" (
	"ref" text PRIMARY KEY NOT NULL,
	"phone_key" text NOT NULL,
	"kind" text NOT NULL,
	"lead_id" integer,
	"at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE INDEX "phone_usage_key_idx" ON "phone_usage" USING btree ("phone_key","kind","at");