CREATE TABLE "bot_sessions" (
	"key" text PRIMARY KEY NOT NULL,
	"value" jsonb NOT NULL,
	"updated_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "call_attempts" (
	"id" text PRIMARY KEY NOT NULL,
	"lead_id" integer NOT NULL,
	"number" integer NOT NULL,
	"token_hash" text NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"outcome" text,
	"code" text,
	"reason" text,
	"duration_sec" integer,
	"session_id" text,
	"result_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "effects" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "effects_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"lead_id" integer NOT NULL,
	"kind" text NOT NULL,
	"idem_key" text NOT NULL,
	"payload" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"status" text DEFAULT 'pending' NOT NULL,
	"needs_crm" boolean DEFAULT false NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"run_at" timestamp with time zone NOT NULL,
	"lease_until" timestamp with time zone,
	"last_error" text,
	"result" jsonb,
	"created_at" timestamp with time zone NOT NULL,
	"done_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "incidents" (
	"id" integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "incidents_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 2147483647 START WITH 1 CACHE 1),
	"provider" text NOT NULL,
	"kind" text NOT NULL,
	"message" text,
	"opened_at" timestamp with time zone NOT NULL,
	"closed_at" timestamp with time zone,
	"failures" integer DEFAULT 1 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "lead_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "lead_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"lead_id" integer NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"track" text NOT NULL,
	"from_state" text,
	"to_state" text,
	"reason" text NOT NULL,
	"actor" text DEFAULT 'system' NOT NULL,
	"actor_name" text,
	"data" jsonb
);
--> statement-breakpoint
CREATE TABLE "leads" (
	"id" integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "leads_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 2147483647 START WITH 1 CACHE 1),
	"state" text DEFAULT 'received' NOT NULL,
	"crm_status" text DEFAULT 'pending' NOT NULL,
	"crm_id" text,
	"crm_error" text,
	"name" text NOT NULL,
	"phone" text,
	"phone_raw" text NOT NULL,
	"city" text,
	"timezone" text,
	"partner" text,
	"ref" text,
	"ip" text,
	"comment" text,
	"extra" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"dedupe_key" text,
	"source" text DEFAULT 'api' NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"budget_base" integer DEFAULT 0 NOT NULL,
	"current_attempt_id" text,
	"next_run_at" timestamp with time zone,
	"night_sms_at" timestamp with time zone,
	"phone_corrected" boolean DEFAULT false NOT NULL,
	"call_now" boolean DEFAULT false NOT NULL,
	"first_call_at" timestamp with time zone,
	"created_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL,
	"anonymized_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "settings" (
	"key" text PRIMARY KEY NOT NULL,
	"value" jsonb NOT NULL,
	"updated_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "tg_cards" (
	"lead_id" integer NOT NULL,
	"chat_id" text NOT NULL,
	"message_id" integer NOT NULL,
	"text_hash" text,
	"updated_at" timestamp with time zone NOT NULL,
	CONSTRAINT "tg_cards_lead_id_chat_id_pk" PRIMARY KEY("lead_id","chat_id")
);
--> statement-breakpoint
CREATE TABLE "tg_outbox" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "tg_outbox_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"chat_id" text NOT NULL,
	"kind" text NOT NULL,
	"lead_id" integer,
	"payload" jsonb,
	"status" text DEFAULT 'pending' NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"run_at" timestamp with time zone NOT NULL,
	"last_error" text,
	"created_at" timestamp with time zone NOT NULL,
	"sent_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "call_attempts" ADD CONSTRAINT "call_attempts_lead_id_leads_id_fk" FOREIGN KEY ("lead_id") REFERENCES "public"."leads"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "effects" ADD CONSTRAINT "effects_lead_id_leads_id_fk" FOREIGN KEY ("lead_id") REFERENCES "public"."leads"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "lead_events" ADD CONSTRAINT "lead_events_lead_id_leads_id_fk" FOREIGN KEY ("lead_id") REFERENCES "public"."leads"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "tg_cards" ADD CONSTRAINT "tg_cards_lead_id_leads_id_fk" FOREIGN KEY ("lead_id") REFERENCES "public"."leads"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "call_attempts_lead_idx" ON "call_attempts" USING btree ("lead_id");--> statement-breakpoint
CREATE UNIQUE INDEX "effects_idem_uq" ON "effects" USING btree ("idem_key");--> statement-breakpoint
CREATE INDEX "effects_due_idx" ON "effects" USING btree ("run_at") WHERE "effects"."status" in ('pending', 'running');--> statement-breakpoint
CREATE INDEX "effects_lead_idx" ON "effects" USING btree ("lead_id");--> statement-breakpoint
CREATE UNIQUE INDEX "incidents_open_uq" ON "incidents" USING btree ("provider","kind") WHERE "incidents"."closed_at" is null;--> statement-breakpoint
CREATE INDEX "lead_events_lead_idx" ON "lead_events" USING btree ("lead_id","id");--> statement-breakpoint
CREATE INDEX "leads_due_idx" ON "leads" USING btree ("next_run_at") WHERE "leads"."next_run_at" is not null;--> statement-breakpoint
CREATE INDEX "leads_state_idx" ON "leads" USING btree ("state","id");--> statement-breakpoint
CREATE UNIQUE INDEX "leads_active_dedupe_uq" ON "leads" USING btree ("dedupe_key") WHERE "leads"."dedupe_key" is not null and "leads"."state" not in ('confirmed', 'voicemail', 'invalid_phone', 'manual');--> statement-breakpoint
CREATE INDEX "leads_created_idx" ON "leads" USING btree ("created_at");--> statement-breakpoint
CREATE UNIQUE INDEX "tg_outbox_card_pending_uq" ON "tg_outbox" USING btree ("chat_id","lead_id") WHERE "tg_outbox"."kind" = 'card' and "tg_outbox"."status" = 'pending';--> statement-breakpoint
CREATE INDEX "tg_outbox_due_idx" ON "tg_outbox" USING btree ("run_at") WHERE "tg_outbox"."status" = 'pending';