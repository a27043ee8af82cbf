"""National directory: people, activities, organisations, services, mailbox entries, communes,
profile cards and the search index (FTS5 on SQLite, tsvector + pg_trgm on PostgreSQL)

Revision ID: 0002_directory
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

from monsisra.store.directory import POSTGRES_DDL, SQLITE_FTS_DDL

revision = "0002_directory"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dir_communes',
    sa.Column('code', sa.String(length=5), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('department_code', sa.String(length=3), nullable=False),
    sa.Column('department', sa.String(length=80), nullable=False),
    sa.Column('postcodes', sa.String(length=200), nullable=False),
    sa.Column('latitude', sa.Float(), nullable=True),
    sa.Column('longitude', sa.Float(), nullable=True),
    sa.Column('population', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_dir_communes'))
    )
    op.create_index(op.f('ix_dir_communes_department_code'), 'dir_communes', ['department_code'], unique=False)
    op.create_table('dir_import_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('stamp', sa.String(length=12), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_import_runs'))
    )
    op.create_table('dir_meta',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_dir_meta'))
    )
    op.create_table('dir_organisations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=60), nullable=False),
    sa.Column('id_type', sa.String(length=10), nullable=False),
    sa.Column('identifier', sa.String(length=40), nullable=False),
    sa.Column('finess', sa.String(length=20), nullable=False),
    sa.Column('siret', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('trade_name', sa.String(length=200), nullable=False),
    sa.Column('postcode', sa.String(length=10), nullable=False),
    sa.Column('commune_code', sa.String(length=10), nullable=False),
    sa.Column('row_hash', sa.String(length=32), nullable=False),
    sa.Column('last_run', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_organisations')),
    sa.UniqueConstraint('key', name=op.f('uq_dir_organisations_key'))
    )
    op.create_table('dir_people',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('national_id', sa.String(length=20), nullable=False),
    sa.Column('id_type', sa.String(length=2), nullable=False),
    sa.Column('pp_id', sa.String(length=20), nullable=False),
    sa.Column('title', sa.String(length=40), nullable=False),
    sa.Column('civility', sa.String(length=40), nullable=False),
    sa.Column('last_name', sa.String(length=120), nullable=False),
    sa.Column('first_name', sa.String(length=120), nullable=False),
    sa.Column('profession_code', sa.String(length=8), nullable=False),
    sa.Column('profession', sa.String(length=120), nullable=False),
    sa.Column('category', sa.String(length=60), nullable=False),
    sa.Column('sort_key', sa.String(length=250), nullable=False),
    sa.Column('row_hash', sa.String(length=32), nullable=False),
    sa.Column('last_run', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_people')),
    sa.UniqueConstraint('national_id', name=op.f('uq_dir_people_national_id'))
    )
    op.create_table('dir_search',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
    sa.Column('ref', sa.String(length=24), nullable=False),
    sa.Column('section', sa.String(length=14), nullable=False),
    sa.Column('kind', sa.String(length=3), nullable=False),
    sa.Column('is_local', sa.Boolean(), nullable=False),
    sa.Column('local_mailbox_id', sa.Integer(), nullable=True),
    sa.Column('address', sa.String(length=254), nullable=True),
    sa.Column('national_id', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.Column('profession', sa.String(length=120), nullable=False),
    sa.Column('specialty', sa.String(length=400), nullable=False),
    sa.Column('organisation', sa.String(length=200), nullable=False),
    sa.Column('service', sa.String(length=200), nullable=False),
    sa.Column('commune_code', sa.String(length=5), nullable=False),
    sa.Column('commune', sa.String(length=120), nullable=False),
    sa.Column('postcode', sa.String(length=10), nullable=False),
    sa.Column('department_code', sa.String(length=3), nullable=False),
    sa.Column('latitude', sa.Float(), nullable=True),
    sa.Column('longitude', sa.Float(), nullable=True),
    sa.Column('is_expert', sa.Boolean(), nullable=False),
    sa.Column('is_resource_team', sa.Boolean(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_search'))
    )
    op.create_index(op.f('ix_dir_search_ref'), 'dir_search', ['ref'], unique=False)
    op.create_table('dir_term_keys',
    sa.Column('key', sa.String(length=60), nullable=False),
    sa.Column('term', sa.String(length=60), nullable=False),
    sa.PrimaryKeyConstraint('key', 'term', name=op.f('pk_dir_term_keys'))
    )
    op.create_table('dir_activities',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('person_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('specialty_code', sa.String(length=10), nullable=False),
    sa.Column('specialty', sa.String(length=160), nullable=False),
    sa.Column('skill_type', sa.String(length=60), nullable=False),
    sa.Column('mode_code', sa.String(length=4), nullable=False),
    sa.Column('mode', sa.String(length=40), nullable=False),
    sa.Column('structure_id', sa.String(length=40), nullable=False),
    sa.Column('siret', sa.String(length=20), nullable=False),
    sa.Column('finess', sa.String(length=20), nullable=False),
    sa.Column('site_name', sa.String(length=200), nullable=False),
    sa.Column('trade_name', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=300), nullable=False),
    sa.Column('postcode', sa.String(length=10), nullable=False),
    sa.Column('commune_code', sa.String(length=10), nullable=False),
    sa.Column('commune', sa.String(length=120), nullable=False),
    sa.Column('department_code', sa.String(length=4), nullable=False),
    sa.Column('phone', sa.String(length=40), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('sector', sa.String(length=120), nullable=False),
    sa.Column('function', sa.String(length=120), nullable=False),
    sa.Column('row_hash', sa.String(length=32), nullable=False),
    sa.Column('last_run', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['dir_people.id'], name=op.f('fk_dir_activities_person_id_dir_people'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_activities')),
    sa.UniqueConstraint('key', name=op.f('uq_dir_activities_key'))
    )
    op.create_index(op.f('ix_dir_activities_person_id'), 'dir_activities', ['person_id'], unique=False)
    op.create_table('dir_profiles',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('commune_code', sa.String(length=5), nullable=False),
    sa.Column('postcode', sa.String(length=10), nullable=False),
    sa.Column('notification_phone', sa.String(length=40), nullable=False),
    sa.Column('notification_email', sa.String(length=254), nullable=False),
    sa.Column('modalities', sa.JSON(), nullable=True),
    sa.Column('competences', sa.Text(), nullable=False),
    sa.Column('activities', sa.Text(), nullable=False),
    sa.Column('equipment', sa.Text(), nullable=False),
    sa.Column('expert', sa.JSON(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_dir_profiles_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_dir_profiles'))
    )
    op.create_table('dir_services',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('organisation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['dir_organisations.id'], name=op.f('fk_dir_services_organisation_id_dir_organisations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_services')),
    sa.UniqueConstraint('organisation_id', 'name', name=op.f('uq_dir_services_organisation_id_name'))
    )
    op.create_table('dir_mailboxes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('address', sa.String(length=254), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('kind', sa.String(length=3), nullable=False),
    sa.Column('national_id', sa.String(length=20), nullable=False),
    sa.Column('local_mailbox_id', sa.Integer(), nullable=True),
    sa.Column('organisation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('service_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('structure_id_type', sa.String(length=4), nullable=False),
    sa.Column('structure_id', sa.String(length=40), nullable=False),
    sa.Column('service', sa.String(length=200), nullable=False),
    sa.Column('title', sa.String(length=40), nullable=False),
    sa.Column('last_name', sa.String(length=120), nullable=False),
    sa.Column('first_name', sa.String(length=120), nullable=False),
    sa.Column('profession_code', sa.String(length=8), nullable=False),
    sa.Column('profession', sa.String(length=120), nullable=False),
    sa.Column('specialty_code', sa.String(length=10), nullable=False),
    sa.Column('specialty', sa.String(length=160), nullable=False),
    sa.Column('paperless', sa.String(length=2), nullable=False),
    sa.Column('org_name', sa.String(length=200), nullable=False),
    sa.Column('trade_name', sa.String(length=200), nullable=False),
    sa.Column('address_lines', sa.String(length=400), nullable=False),
    sa.Column('postcode', sa.String(length=10), nullable=False),
    sa.Column('city', sa.String(length=120), nullable=False),
    sa.Column('department_code', sa.String(length=4), nullable=False),
    sa.Column('country', sa.String(length=60), nullable=False),
    sa.Column('sort_key', sa.String(length=250), nullable=False),
    sa.Column('row_hash', sa.String(length=32), nullable=False),
    sa.Column('last_run', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['local_mailbox_id'], ['mailboxes.id'], name=op.f('fk_dir_mailboxes_local_mailbox_id_mailboxes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['organisation_id'], ['dir_organisations.id'], name=op.f('fk_dir_mailboxes_organisation_id_dir_organisations')),
    sa.ForeignKeyConstraint(['service_id'], ['dir_services.id'], name=op.f('fk_dir_mailboxes_service_id_dir_services')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dir_mailboxes')),
    sa.UniqueConstraint('address', name=op.f('uq_dir_mailboxes_address'))
    )
    op.create_index(op.f('ix_dir_mailboxes_national_id'), 'dir_mailboxes', ['national_id'], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute(SQLITE_FTS_DDL)
    else:
        for statement in POSTGRES_DDL:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS dir_search_fts")
    for name in ("dir_mailboxes", "dir_services", "dir_profiles", "dir_activities", "dir_term_keys", "dir_search",
                 "dir_people", "dir_organisations", "dir_meta", "dir_import_runs", "dir_communes"):
        op.drop_table(name)
